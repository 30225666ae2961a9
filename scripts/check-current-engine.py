#!/usr/bin/env python3
"""Replays the statements tally sent to a ClickHouse 18.16 on chdb (a current engine).

    check-current-engine.py --prepare WORK DATABASE CAPTURE_URL
        reads WORK/query_log.jsonl (the capture's system.query_log), keeps every distinct
        statement in first-seen order, and dumps, for each INSERT statement, the rows of its
        table in its columns as RowBinary (what tally sends) from the capture server;
        writes WORK/statements.jsonl and WORK/tables/.
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
PROFILE_SETTINGS = {"log_queries"}

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


def main(argv):
    if argv[:1] == ["--prepare"]:
        prepare(*argv[1:4])
        return
    extra = [argv[i + 1] for i, a in enumerate(argv) if a == "--extra-read"]
    replay(argv[0], extra)


if __name__ == "__main__":
    main(sys.argv[1:])
