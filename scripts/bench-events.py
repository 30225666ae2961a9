#!/usr/bin/env python3
"""Prints benchmark events as JSON lines: with --grants, one purchased pack and two
promotional grants per account (three lots; accounts with admins and alert thresholds, as
real ones have); otherwise --calls AI calls spread over --accounts accounts, 4 services and 40 users,
with ids unique per --round. Round R's calls fall on day R after the grants (--days: how
many days the grants come before --now), so a run over several rounds moves through days
as production does: the dedup window and the days open to late events roll forward.
Deterministic for a given --seed, --round, --days and --now."""

import argparse
import json
import random
from datetime import datetime, timedelta, timezone

FEATURES = [("production-room", "image_generation", "mid"),
            ("production-room", "audio_generation", "short"),
            ("image-studio", "text_to_image", None),
            ("image-studio", "erase", None),
            ("brand-scan", "deep_scan", None),
            ("chat", "regeneration", "short")]


def ts(at):
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--accounts", type=int, default=10000)
    p.add_argument("--calls", type=int, default=200000)
    p.add_argument("--round", type=int, default=0)
    p.add_argument("--grants", action="store_true")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--now", default=None)
    p.add_argument("--days", type=int, default=0)
    a = p.parse_args()
    now = datetime.fromisoformat(a.now) if a.now else datetime.now(timezone.utc)
    rng = random.Random(a.seed * 1000 + a.round)
    out = []
    if a.grants:
        for i in range(a.accounts):
            acct = f"acct-{i:06d}"
            at = ts(now - timedelta(days=a.days, hours=6))
            out.append(json.dumps({"specversion": "1.0", "type": "account.settings", "id": f"s-{i}",
                "source": "billing", "subject": acct, "time": at,
                "data": {"admins": [f"ops@{acct}.example"], "locale": "ko"}}))
            out.append(json.dumps({"specversion": "1.0", "type": "credit.grant", "id": f"pack-{i}",
                "source": "billing", "subject": acct, "time": at,
                "data": {"kind": "purchased", "credits": 1000000, "expires_at": None}}))
            out.append(json.dumps({"specversion": "1.0", "type": "credit.grant", "id": f"promo-{i}",
                "source": "billing", "subject": acct, "time": at,
                "data": {"kind": "promotional", "credits": 500, "valid_days": 30}}))
            out.append(json.dumps({"specversion": "1.0", "type": "credit.grant", "id": f"welcome-{i}",
                "source": "billing", "subject": acct, "time": at,
                "data": {"kind": "promotional", "credits": 100, "valid_days": 90}}))
    else:
        start = now - timedelta(days=a.days - a.round, hours=5)
        step = 4 * 3600 / max(a.calls, 1)
        for n in range(a.calls):
            service, feature, variant = FEATURES[rng.randrange(len(FEATURES))]
            data = {"user": f"user-{rng.randrange(40)}@example.com", "feature": feature}
            if variant:
                data["variant"] = variant
            out.append(json.dumps({"specversion": "1.0", "type": "ai.usage",
                "id": f"r{a.round}-{n}", "source": service,
                "subject": f"acct-{rng.randrange(a.accounts):06d}",
                "time": ts(start + timedelta(seconds=n * step)), "data": data}))
    print("\n".join(out))


if __name__ == "__main__":
    main()
