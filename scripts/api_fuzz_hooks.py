"""schemathesis hooks for scripts/api-fuzz.sh: the rules of tally's API that OpenAPI 3.0
cannot state (one parameter against another, names from the configured cost matrix).

They touch only the cases schemathesis generates as valid (positive mode), and make them
valid for the server as well: a case generated to break the document (negative mode) is
sent as generated, so negative_data_rejection still sees every forbidden value. What each
rule keeps is said in the document's descriptions.
"""

import datetime

import schemathesis

# A feature of config/tally.toml's cost matrix priced without variants: `feature` must
# name one the matrix knows, and `variant` only where the feature has variants.
FEATURE = "erase"

DATA = {
    "ai.usage": {"user": "kim", "feature": FEATURE},
    "credit.grant": {"kind": "promotional", "credits": 1},
    "credit.void": {"lot": "lot-1", "reason": "fuzz"},
    "account.plan": {"plan": "pro", "anchor": "2026-11-01T00:00:00Z"},
    "account.settings": {},
}


def _day(text):
    try:
        return datetime.date.fromisoformat(str(text)[:10])
    except ValueError:
        return None


def _ordered_days(query, most_days):
    """`from` not after `to`, at most `most_days` apart (the reports' range rules)."""
    first, last = _day(query.get("from")), _day(query.get("to"))
    if first is None or last is None:
        return
    if last < first:
        first, last = last, first
    if (last - first).days > most_days:
        last = first + datetime.timedelta(days=most_days)
    query["from"], query["to"] = first.isoformat(), last.isoformat()


@schemathesis.hook
def map_case(context, case):
    meta = getattr(case, "meta", None)
    if meta is None or not meta.generation.mode.is_positive:
        return case
    path = case.operation.path
    query = case.query if isinstance(case.query, dict) else None
    if path == "/v1/reports/daily" and query is not None:
        _ordered_days(query, 3660)
    elif path == "/v1/reports/monthly" and query is not None:
        # `month`, or `from` and `to`: one of the two.
        if "month" in query:
            query.pop("from", None)
            query.pop("to", None)
        elif "from" in query or "to" in query:
            query.setdefault("from", query.get("to"))
            query.setdefault("to", query.get("from"))
            _ordered_days(query, 3660)
        else:
            query["month"] = "2026-11"
    elif path == "/v1/accounts/{account}/ledger" and query is not None:
        # `to` after `from` (defaults: the epoch and tomorrow): otherwise both go.
        def at(text, default):
            if text is None:
                return default
            try:
                value = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
            except ValueError:
                return None
            return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)

        utc = datetime.timezone.utc
        first = at(query.get("from"), datetime.datetime(1970, 1, 1, tzinfo=utc))
        last = at(query.get("to"), datetime.datetime.now(utc) + datetime.timedelta(days=1))
        if first is not None and last is not None and last <= first:
            query.pop("from", None)
            query.pop("to", None)
        # A cursor is only one this API gave out.
        query.pop("cursor", None)
    elif path == "/v1/accounts" and isinstance(query, dict):
        # A cursor is only one this API gave out.
        query.pop("cursor", None)
    elif path in ("/v1/check", "/v1/holds") and isinstance(case.body, dict):
        case.body["feature"] = FEATURE
        case.body.pop("variant", None)
        # The cost (quantity times the feature's price) must fit an amount too.
        if isinstance(case.body.get("quantity"), (int, float)):
            case.body["quantity"] = min(case.body["quantity"], 1_000_000_000)
    elif path == "/v1/events":
        # Each type's `data` as the contract has it (DESIGN.md, Contract).
        events = case.body if isinstance(case.body, list) else [case.body]
        for event in events:
            if isinstance(event, dict):
                event["data"] = DATA.get(event.get("type"), {})
                # Within the allowed lateness and clock skew of the server's clock.
                event["time"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
    return case
