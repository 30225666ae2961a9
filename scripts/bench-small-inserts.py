#!/usr/bin/env python3
"""Times small INSERTs on a ClickHouse server: what a hold's flush costs it.

usage: bench-small-inserts.py URL [N]

Creates the database `small_inserts` (dropped first) with two tables shaped like tally's
`ledger` (29 columns, three arrays: a wide part of about 60 files on 18.16), then makes N
INSERTs of 6 rows into one while a second thread keeps inserting batches of 50 rows into
the other, so parts are created and merged away meanwhile. Prints p50, p90, p99 and max.
Run it several times in a row: on ext4 without a journal each run is slower than the one
before (docs/benchmarks.md, session 16).
"""
import random
import sys
import threading
import time
import urllib.parse
import urllib.request

URL = sys.argv[1].rstrip("/")
N = int(sys.argv[2]) if len(sys.argv) > 2 else 300
COLUMNS = (
    "entry_id String, account String, entry_type String, time DateTime, day Date, "
    "service String, user String, feature String, variant String, quantity Int64, "
    "status String, pool String, credits Int64, paid_lots Array(String), "
    "paid_kinds Array(String), paid_credits Array(Int64), shortfall Int64, "
    "matrix_version String, event_id String, lot String, lot_kind String, "
    "payment_method String, payment_reference String, comment String, version UInt64, "
    "hold_id String, hold_outcome String, hold_held Int64, partition UInt32"
)
ENGINE = "ReplacingMergeTree(version) PARTITION BY toYYYYMM(time) ORDER BY (account, entry_id)"


def query(sql, body=b""):
    url = URL + "/?query=" + urllib.parse.quote(sql)
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=60) as answer:
        return answer.read()


def rows(count):
    return "".join(
        f'{{"entry_id":"e{random.random()}","account":"a{i}","entry_type":"hold_expired",'
        f'"time":"2026-12-07 10:00:00","day":"2026-12-07","credits":5,"paid_lots":["x"],'
        f'"version":1}}\n'
        for i in range(count)
    ).encode()


def main():
    query("DROP DATABASE IF EXISTS small_inserts")
    query("CREATE DATABASE small_inserts")
    for table in ("ledger", "churn"):
        query(f"CREATE TABLE small_inserts.{table} ({COLUMNS}) ENGINE = {ENGINE}")
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            query("INSERT INTO small_inserts.churn FORMAT JSONEachRow", rows(50))

    other = threading.Thread(target=churn)
    other.start()
    took = []
    try:
        for _ in range(N):
            start = time.perf_counter()
            query("INSERT INTO small_inserts.ledger FORMAT JSONEachRow", rows(6))
            took.append((time.perf_counter() - start) * 1000)
    finally:
        stop.set()
        other.join()
    query("DROP DATABASE small_inserts")
    took.sort()
    pick = lambda q: took[min(len(took) - 1, int(len(took) * q))]
    print(f"{URL}: {N} INSERTs of 6 rows beside a churn: p50 {pick(0.5):.1f} ms "
          f"p90 {pick(0.9):.1f} ms p99 {pick(0.99):.1f} ms max {took[-1]:.1f} ms")


if __name__ == "__main__":
    main()
