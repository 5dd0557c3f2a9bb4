"""Small chat datasets the tests upload."""

import json

TICKETS = [
    ("My invoice charged me twice this month.", "category: billing\npriority: high\nteam: payments"),
    ("How do I export my data to CSV?", "category: how-to\npriority: low\nteam: support"),
    ("The app crashes when I open settings.", "category: bug\npriority: high\nteam: mobile"),
    ("Can I change the email on my account?", "category: account\npriority: low\nteam: support"),
    ("Your API returns 500 on every request.", "category: outage\npriority: urgent\nteam: platform"),
    ("Please cancel my subscription.", "category: billing\npriority: medium\nteam: payments"),
    ("Where can I download my invoices?", "category: how-to\npriority: low\nteam: support"),
    ("Login page shows a blank screen.", "category: bug\npriority: high\nteam: web"),
    ("I want to add a second admin.", "category: account\npriority: low\nteam: support"),
    ("Webhooks stopped arriving an hour ago.", "category: outage\npriority: urgent\nteam: platform"),
    ("Why did my plan price go up?", "category: billing\npriority: medium\nteam: payments"),
    ("Dark mode makes the charts unreadable.", "category: bug\npriority: low\nteam: web"),
]

HELD_OUT = [  # ten tickets not in TICKETS (a file needs at least ten examples)
    ("I can't log in since the update.", "category: bug\npriority: high\nteam: mobile"),
    ("Do you offer student discounts?", "category: billing\npriority: low\nteam: payments"),
    ("The export button does nothing.", "category: bug\npriority: medium\nteam: web"),
    ("How do I rotate my API key?", "category: how-to\npriority: low\nteam: support"),
    ("All requests time out since noon.", "category: outage\npriority: urgent\nteam: platform"),
    ("I was charged after cancelling.", "category: billing\npriority: high\nteam: payments"),
    ("Can I merge two accounts?", "category: account\npriority: low\nteam: support"),
    ("Search returns nothing at all.", "category: bug\npriority: high\nteam: web"),
    ("Where do I change my timezone?", "category: how-to\npriority: low\nteam: support"),
    ("The status page says everything is down.", "category: outage\npriority: urgent\nteam: platform"),
]


def chat_jsonl(pairs: list[tuple[str, str]] = TICKETS) -> bytes:
    lines = [
        json.dumps({"messages": [{"role": "user", "content": f"Ticket: {q}"}, {"role": "assistant", "content": a}]})
        for q, a in pairs
    ]
    return ("\n".join(lines) + "\n").encode()
