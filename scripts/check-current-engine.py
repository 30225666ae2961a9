#!/usr/bin/env python3
"""Replays the statements tally sent to a ClickHouse 18.16 on chdb (a current engine).

    check-current-engine.py --prepare WORK DATABASE CAPTURE_URL
        reads WORK/query_log.jsonl (the capture's system.query_log), keeps every distinct
        statement in first-seen order, and dumps, for each INSERT statement, the rows of its
        table in its columns as RowBinary (what tally sends) from the capture server;
        writes WORK/statements.jsonl and WORK/tables/.
    check-current-engine.py --prepare-cluster WORK
        the same for WORK/cluster_log.jsonl (the capture on the local cluster): writes
        WORK/cluster-statements.jsonl.
    check-current-engine.py --cluster DIR
        replays DIR/cluster-statements.jsonl on chdb as far as an engine without a cluster
        can (see replay_cluster).
    check-current-engine.py DIR [--extra-read SQL]...
        replays DIR/statements.jsonl on chdb in one session database: DDL, then inserts,
        then reads and mutations; fails on the first error, naming the statement.

Called by scripts/check-current-engine.sh, which says what the capture covers."""

import json
import os
import re
import sys
import tempfile
import urllib.parse
import urllib.request

# The settings tally adds to every INSERT on a server of chdb's version: the output of
# `insert_settings("26.9.2.1")` in src/store/writes.rs (a unit test there checks this line).
CURRENT_INSERT_SETTINGS = "insert_deduplicate=0, async_insert=0, wait_for_async_insert=1"

# Settings the capture's own profile adds to every query (not tally's).
PROFILE_SETTINGS = {"log_queries", "max_memory_usage"}

INSERT_RE = re.compile(r"^INSERT INTO\s+(`?\w+`?)\s*\((.*?)\)\s*FORMAT\s+RowBinary\s*$", re.S | re.I)


def kind(sql):
    head = sql.lstrip().upper()
    if head.startswith("CREATE ") or (head.startswith("ALTER ") and " ADD COLUMN " in head):
        return "ddl"
    if head.startswith("INSERT "):
        return "insert"
    return "read"


def shape(sql):
    """The statement with its literals and lists of literals made placeholders."""
    s = re.sub(r"'(?:[^'\\]|\\.)*'", "?", sql)
    s = re.sub(r"\btally_\w+", "DB", s)
    s = re.sub(r"(?<![\w.])-?\d+(\.\d+)?\b", "N", s)
    s = re.sub(r"\(\s*(?:[?N]\s*,\s*)+[?N]\s*\)", "(?...)", s)
    return re.sub(r"\s+", " ", s).strip()


def prepare(work, database, capture):
    seen = {}
    for line in open(os.path.join(work, "query_log.jsonl"), encoding="utf-8", errors="surrogateescape"):
        row = json.loads(line)
        sql = row["query"]
        settings = {
            n: v for n, v in zip(row["Settings.Names"], row["Settings.Values"]) if n not in PROFILE_SETTINGS
        }
        if sql not in seen:
            seen[sql] = {"kind": kind(sql), "sql": sql, "settings": settings, "sent": 0, "failed_on_18": 0}
        seen[sql]["sent"] += 1
        if row.get("exception"):
            seen[sql]["failed_on_18"] += 1
    os.makedirs(os.path.join(work, "tables"), exist_ok=True)
    with open(os.path.join(work, "statements.jsonl"), "w") as out:
        for n, st in enumerate(seen.values()):
            m = INSERT_RE.match(st["sql"]) if st["kind"] == "insert" else None
            if st["kind"] == "insert":
                if not m:
                    sys.exit(f"an INSERT not in RowBinary, which this check cannot replay: {st['sql']}")
                data = f"{n}.rowbinary"
                query = f"SELECT {m.group(2)} FROM {m.group(1)} FORMAT RowBinary"
                url = capture + "/?" + urllib.parse.urlencode({"database": database, "query_id": f"capture-dump-{n}"})
                with urllib.request.urlopen(urllib.request.Request(url, data=query.encode())) as r:
                    open(os.path.join(work, "tables", data), "wb").write(r.read())
                st["data"] = data
            out.write(json.dumps(st) + "\n")


def replay(directory, extra_reads):
    import chdb
    from chdb import session

    statements = [json.loads(line) for line in open(os.path.join(directory, "statements.jsonl"))]
    statements += [{"kind": "read", "sql": sql, "settings": {}, "sent": 1, "failed_on_18": 0} for sql in extra_reads]
    # 18.16 logs times in seconds, so within one kind the capture's order is only roughly
    # the order sent: the DDL goes database, tables, then the ALTERs.
    def order(st):
        sql = st["sql"].lstrip().upper()
        ddl = 0 if sql.startswith("CREATE DATABASE") else 1 if sql.startswith("CREATE") else 2
        return ({"ddl": 0, "insert": 1, "read": 2}[st["kind"]], ddl if st["kind"] == "ddl" else 0)

    statements.sort(key=order)  # stable: capture order within a kind
    engine = chdb.query("SELECT version()", "TabSeparated").bytes().decode().strip()
    ran, shapes = {"ddl": 0, "insert": 0, "read": 0}, set()
    sent = sum(st["sent"] for st in statements)
    with tempfile.TemporaryDirectory() as path:
        sess = session.Session(path)
        used = False

        def run(st, sql):
            try:
                return sess.query(sql, "TabSeparated")
            except Exception as e:  # chdb raises its own error types
                print(f"FAILED ({st['kind']}) on chdb {chdb.__version__} (ClickHouse {engine}):\n  {sql}\n  {e}")
                sys.exit(1)

        for st in statements:
            sql = st["sql"]
            if st["kind"] == "insert":
                m = INSERT_RE.match(sql)
                # What tally sent to 18.16, with what it adds on a current engine over it.
                current = dict(kv.split("=") for kv in CURRENT_INSERT_SETTINGS.split(", "))
                merged = {**st["settings"], **current}
                settings = ", ".join(f"{k}={v}" for k, v in merged.items())
                data = os.path.join(os.path.abspath(directory), "tables", st["data"])
                sql = f"INSERT INTO {m.group(1)} ({m.group(2)}) FROM INFILE '{data}' SETTINGS {settings} FORMAT RowBinary"
            added = re.match(r"\s*ALTER TABLE (\w+) ADD COLUMN (\w+)", sql)
            if added:
                # As in the capture, where the script dropped the column first: the ALTER
                # of a database made by an earlier release.
                run(st, f"ALTER TABLE {added.group(1)} DROP COLUMN IF EXISTS {added.group(2)}")
            run(st, sql)
            m = re.match(r"\s*CREATE DATABASE IF NOT EXISTS (\w+)", st["sql"])
            if m and not used:
                run(st, f"USE {m.group(1)}")
                used = True
            ran[st["kind"]] += 1
            shapes.add(shape(st["sql"]))
        sess.close()
    print(
        f"current engine: {sum(ran.values())} distinct statements ({sent} sent by tally in the capture) "
        f"of {len(shapes)} shapes ran on chdb {chdb.__version__} (ClickHouse {engine}): "
        f"{ran['ddl']} DDL, {ran['insert']} inserts (captured rows as RowBinary, with tally's insert settings), "
        f"{ran['read']} reads and mutations; no error"
    )


ON_CLUSTER_RE = re.compile(r"\s+ON CLUSTER\s+(\w+)", re.I)


def prepare_cluster(work):
    """Distinct statements of the cluster capture (WORK/cluster_log.jsonl), first-seen order."""
    seen = {}
    for line in open(os.path.join(work, "cluster_log.jsonl"), encoding="utf-8", errors="surrogateescape"):
        row = json.loads(line)
        sql = row["query"]
        settings = {
            n: v for n, v in zip(row["Settings.Names"], row["Settings.Values"]) if n not in PROFILE_SETTINGS
        }
        key = (sql, json.dumps(settings, sort_keys=True))
        if key not in seen:
            seen[key] = {"kind": kind(sql), "sql": sql, "settings": settings, "sent": 0}
        seen[key]["sent"] += 1
    if not any(ON_CLUSTER_RE.search(st["sql"]) for st in seen.values()):
        sys.exit("the cluster capture holds no ON CLUSTER statement: did tally migrate run on the cluster?")
    with open(os.path.join(work, "cluster-statements.jsonl"), "w") as out:
        for st in seen.values():
            out.write(json.dumps(st) + "\n")


def replay_cluster(directory):
    """What a current engine is asked of the statements only a cluster gets.

    chdb cannot run a cluster: it has no DDL worker ("Replicated DDL queries are
    disabled"), and its Replicated tables stay read-only (no keeper session of their own),
    so an INSERT into one never returns. So, in a session whose config has the cluster
    (`remote_servers`), a server's macros and an in-memory keeper (`testkeeper`):
    - every DDL statement runs as each server runs it, without its ON CLUSTER clause: the
      Replicated engines (paths with macros, version columns) and the Distributed engines
      (cluster, databases, sharding keys) are created by the current engine;
    - every other statement's settings (insert_quorum, select_sequential_consistency,
      insert_distributed_sync, distributed_product_mode, insert_deduplicate...) are set
      with the values tally sent, so a setting the engine no longer knows, or a value it
      refuses, fails the check;
    - and every other statement must have the shape of one the single-server replay ran
      (the same reads and inserts, only routed to shards), or the check fails naming it.
    """
    from chdb import session
    import chdb

    statements = [json.loads(line) for line in open(os.path.join(directory, "cluster-statements.jsonl"))]
    single = {shape(json.loads(line)["sql"]) for line in open(os.path.join(directory, "statements.jsonl"))}
    clusters = {m.group(1) for st in statements for m in [ON_CLUSTER_RE.search(st["sql"])] if m}
    engine = chdb.query("SELECT version()", "TabSeparated").bytes().decode().strip()
    ddl = [st for st in statements if st["kind"] == "ddl" or st["sql"].lstrip().upper().startswith("CREATE DATABASE")]
    rest = [st for st in statements if st not in ddl]
    ran, settings_checked = 0, set()
    with tempfile.TemporaryDirectory() as path:
        remote = "".join(
            f"<{c}><shard><internal_replication>true</internal_replication><replica><host>127.0.0.1</host>"
            f"<port>1</port></replica></shard></{c}>"
            for c in sorted(clusters)
        )
        config = os.path.join(path, "config.xml")
        with open(config, "w") as f:
            f.write(
                f"<clickhouse><remote_servers>{remote}</remote_servers>"
                "<macros><shard>1</shard><replica>r1</replica></macros>"
                "<zookeeper><implementation>testkeeper</implementation></zookeeper></clickhouse>"
            )
        sess = session.Session(os.path.join(path, "db") + f"?config-file={config}")

        def run(st, sql):
            try:
                return sess.query(sql, "TabSeparated")
            except Exception as e:
                print(f"FAILED (cluster {st['kind']}) on chdb {chdb.__version__} (ClickHouse {engine}):\n  {sql}\n  {e}")
                sys.exit(1)

        def order(st):
            sql = st["sql"].lstrip().upper()
            return 0 if sql.startswith("CREATE DATABASE") else 1 if sql.startswith("CREATE") else 2

        for st in sorted(ddl, key=order):
            sql = ON_CLUSTER_RE.sub("", st["sql"], count=1)
            added = re.match(r"\s*ALTER TABLE ([\w.]+) ADD COLUMN (\w+)", sql)
            if added:
                run(st, f"ALTER TABLE {added.group(1)} DROP COLUMN IF EXISTS {added.group(2)}")
            run(st, sql)
            ran += 1
        for st in rest:
            if st["settings"]:
                listed = ", ".join(f"{k}={quote_setting(v)}" for k, v in sorted(st["settings"].items()))
                if listed not in settings_checked:
                    run(st, f"SELECT 1 SETTINGS {listed}")
                    settings_checked.add(listed)
            if shape(st["sql"]) not in single:
                print(f"FAILED (cluster {st['kind']}): a statement only a cluster gets, which this check does not replay:\n  {st['sql']}")
                sys.exit(1)
        # chdb hangs closing a session that holds Replicated tables (their keeper threads):
        # they go first.
        for st in ddl:
            m = re.match(r"\s*CREATE DATABASE IF NOT EXISTS (\w+)", st["sql"])
            if m:
                run(st, f"DROP DATABASE IF EXISTS {m.group(1)} SYNC")
        sess.close()
    print(
        f"current engine, cluster: {ran} DDL statements (ON CLUSTER {', '.join(sorted(clusters))}, run per server) "
        f"created on chdb {chdb.__version__} (ClickHouse {engine}); {len(settings_checked)} sets of settings of "
        f"{len(rest)} other statements accepted; each of those of a shape the single-server replay ran"
    )


def quote_setting(value):
    return value if re.fullmatch(r"-?\d+", value) else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def main(argv):
    if argv[:1] == ["--prepare"]:
        prepare(*argv[1:4])
        return
    if argv[:1] == ["--prepare-cluster"]:
        prepare_cluster(argv[1])
        return
    if argv[:1] == ["--cluster"]:
        replay_cluster(argv[1])
        return
    extra = [argv[i + 1] for i, a in enumerate(argv) if a == "--extra-read"]
    replay(argv[0], extra)


if __name__ == "__main__":
    main(sys.argv[1:])
