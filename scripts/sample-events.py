#!/usr/bin/env python3
"""Prints a realistic sample of tally events as JSON lines: grants, then a few days of AI
calls from several accounts, services and users, with a few failures, one duplicate
delivery and one bad event. Deterministic for a given --seed and --now."""

import argparse
import json
import random
from datetime import datetime, timedelta, timezone

ACCOUNTS = {
    "acme": ["kim@acme.kr", "lee@acme.kr", "park@acme.kr"],
    "globex": ["jane@globex.com", "raj@globex.com"],
    "initech": ["peter@initech.com", "milton@initech.com"],
}
SERVICES = {
    "production-room": [("image_generation", ["short", "mid", "long"]),
                        ("audio_generation", ["short", "mid", "long"]),
                        ("video_generation", ["short", "mid", "long"]),
                        ("regeneration", ["short", "long"])],
    "image-studio": [("text_to_image", [None]), ("erase", [None]), ("upscale", [None])],
    "brand-scan": [("deep_scan", [None]), ("standard_scan", [None])],
}


def ts(at):
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def event(kind, eid, source, account, at, data):
    return {"specversion": "1.0", "type": kind, "id": eid, "source": source,
            "subject": account, "time": ts(at), "data": data}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--calls-per-day", type=int, default=60)
    parser.add_argument("--now", help="RFC 3339; default: now")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    now = (datetime.fromisoformat(args.now.replace("Z", "+00:00")) if args.now
           else datetime.now(timezone.utc)).replace(microsecond=0)
    start = (now - timedelta(days=args.days)).replace(hour=0, minute=0, second=0)
    out = []
    grant_at = start - timedelta(hours=1)
    # Plans with cycles anchored at midnight on the 1st in Seoul (their allowances expire
    # at the end of the cycle), packs and promotions [000][004]; admins get low-credit
    # emails in their language.
    anchor = start.replace(day=1) - timedelta(hours=9)
    for account, plan, admin, locale in [("acme", "standard", "ops@acme.example", "en"),
                                         ("globex", "enterprise", "admin@globex.example", "en"),
                                         ("initech", "pro", "it@initech.example", "ko")]:
        out.append(event("account.settings", f"{account}-settings", "billing", account,
                         grant_at - timedelta(minutes=1),
                         {"admins": [admin], "locale": locale}))
        out.append(event("account.plan", f"{account}-plan", "billing", account, grant_at,
                         {"plan": plan, "anchor": ts(anchor)}))
    out.append(event("credit.grant", "acme-pack-1", "billing", "acme", grant_at,
                     {"kind": "purchased", "credits": 2500, "valid_days": 360,
                      "payment": {"method": "card", "reference": "inv-1001"}}))
    out.append(event("credit.grant", "acme-scan", "billing", "acme", grant_at,
                     {"kind": "purchased", "pool": "scan", "credits": 20,
                      "payment": {"method": "card", "reference": "inv-1002"}}))
    out.append(event("credit.grant", "globex-promo", "billing", "globex", grant_at,
                     {"kind": "promotional", "credits": 100, "valid_days": 30,
                      "comment": "welcome bonus"}))
    n = 0
    for day in range(args.days):
        for _ in range(args.calls_per_day):
            account = rng.choice(list(ACCOUNTS))
            service = rng.choice(list(SERVICES))
            feature, variants = rng.choice(SERVICES[service])
            at = start + timedelta(days=day, seconds=rng.randrange(86400))
            if at > now - timedelta(minutes=1):
                continue
            data = {"user": rng.choice(ACCOUNTS[account]), "feature": feature}
            variant = rng.choice(variants)
            if variant:
                data["variant"] = variant
            if feature == "text_to_image" and rng.random() < 0.3:
                data["quantity"] = rng.randint(2, 4)
            if rng.random() < 0.05:
                data["status"] = "failed"
            n += 1
            out.append(event("ai.usage", f"evt-{n:05d}", service, account, at, data))
    out.sort(key=lambda e: e["time"])
    # The same call delivered twice is charged once; an unknown feature is dead-lettered.
    out.append(out[-1])
    out.append(event("ai.usage", "evt-bad", "image-studio", "acme", now - timedelta(minutes=5),
                     {"user": "kim@acme.kr", "feature": "teleport"}))
    for e in out:
        print(json.dumps(e, ensure_ascii=False))


if __name__ == "__main__":
    main()
