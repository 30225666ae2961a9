#!/usr/bin/env python3
"""Produce-to-visible latency: sends --rate usage events a second for --seconds to a
running `tally run` and polls ClickHouse every --poll seconds for the ledger rows that
became visible; prints p50, p95, p99 and max of (first poll that saw the row) minus (the
moment the event was handed to the producer). A row a query returns was in the table when
the query began (ClickHouse reads the parts there were at its start), so the poll's start is
the moment it counts; the poll interval is the resolution. The query reads the `time`
column first (PREWHERE) and only the granules of this run's events after it: a query that
scans every event id of a long history takes ClickHouse's CPU from the flushes measured.
Topics and database come from the TALLY_* environment, as `tally` itself reads them.
Event ids are --id-prefix, a dash and a nine-digit sequence number ("lat-000000000"): two
runs into the same topics (two builds, each with its own database) use two prefixes, so
neither's events are duplicates of the other's."""

import argparse
import json
import os
import random
import threading
import time
import urllib.parse
import urllib.request
from datetime import datetime, timezone

from confluent_kafka import Producer

FEATURES = [("production-room", "image_generation", "mid"),
            ("image-studio", "text_to_image", None),
            ("brand-scan", "deep_scan", None),
            ("chat", "regeneration", "short")]


def query(database, sql):
    url = "http://127.0.0.1:8123/?" + urllib.parse.urlencode({"database": database})
    with urllib.request.urlopen(url, data=sql.encode(), timeout=10) as r:
        return r.read().decode()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rate", type=int, default=10000)
    p.add_argument("--seconds", type=int, default=30)
    p.add_argument("--accounts", type=int, default=10000)
    p.add_argument("--poll", type=float, default=0.1)
    p.add_argument("--id-prefix", default="lat")
    a = p.parse_args()
    topic = os.environ["TALLY_KAFKA__USAGE_TOPIC"]
    database = os.environ["TALLY_CLICKHOUSE__DATABASE"]
    producer = Producer({"bootstrap.servers": os.environ.get("TALLY_KAFKA__BROKERS", "127.0.0.1:9092"),
                         "linger.ms": 5})
    rng = random.Random(11)
    total = a.rate * a.seconds
    prefix = a.id_prefix + "-"
    sent_at = [0.0] * total
    seen_at = [0.0] * total
    sent = [0]
    done = threading.Event()

    polls = []   # seconds each poll's query took
    # Every event of this run has a time at or after this (the ledger's `time` is seconds);
    # a number, so the server's time zone does not change what it means.
    since = int(time.time()) - 1

    def poll():
        low = 0
        while low < total:
            high = sent[0]
            if high > low:
                asked = time.time()
                rows = query(database,
                             f"SELECT event_id FROM ledger PREWHERE time >= toDateTime({since}) "
                             f"WHERE event_id >= '{prefix}{low:09d}' "
                             f"AND event_id <= '{prefix}{high - 1:09d}' AND entry_type = 'usage' "
                             "FORMAT TabSeparated")
                now = time.time()
                polls.append(now - asked)
                for line in rows.split():
                    n = int(line[len(prefix):])
                    if not seen_at[n]:
                        seen_at[n] = asked
                while low < high and seen_at[low]:
                    low += 1
            if done.is_set() and time.time() > done_at[0] + 60:
                break
            time.sleep(a.poll)

    done_at = [0.0]
    poller = threading.Thread(target=poll)
    poller.start()
    start = time.time()
    step = 0.01
    per_step = max(1, int(a.rate * step))
    n = 0
    while n < total:
        target = start + (n // per_step) * step
        delay = target - time.time()
        if delay > 0:
            time.sleep(delay)
        for _ in range(per_step):
            if n >= total:
                break
            service, feature, variant = FEATURES[rng.randrange(len(FEATURES))]
            data = {"user": f"user-{rng.randrange(40)}@example.com", "feature": feature}
            if variant:
                data["variant"] = variant
            account = f"acct-{rng.randrange(a.accounts):06d}"
            event = {"specversion": "1.0", "type": "ai.usage", "id": f"{prefix}{n:09d}",
                     "source": service, "subject": account,
                     "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                     "data": data}
            sent_at[n] = time.time()
            producer.produce(topic, key=account, value=json.dumps(event))
            n += 1
        sent[0] = n
        producer.poll(0)
    producer.flush()
    achieved = total / (time.time() - start)
    done_at[0] = time.time()
    done.set()
    poller.join()
    lat = sorted(seen_at[i] - sent_at[i] for i in range(total) if seen_at[i])
    missing = total - len(lat)

    def pct(q):
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    print(f"sent {total} events at {achieved:.0f}/s; visible {len(lat)}, missing {missing}")
    print(f"produce -> ledger visible (poll every {a.poll}s, counted at the poll's start): p50 {pct(0.50):.3f}s "
          f"p95 {pct(0.95):.3f}s p99 {pct(0.99):.3f}s max {lat[-1] if lat else float('nan'):.3f}s")
    if polls:
        polls.sort()
        print(f"{len(polls)} polls of the ledger, query time mean {sum(polls) / len(polls):.3f}s "
              f"max {polls[-1]:.3f}s")


if __name__ == "__main__":
    main()
