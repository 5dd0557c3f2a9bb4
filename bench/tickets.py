"""A deterministic synthetic support-ticket dataset with a learnable rule, split into training and test tickets.

Each ticket is a phrasing template of one category filled with a subject, and its answer is
"category: X\\npriority: Y\\nteam: Z" (the style of `tests/datasets.py` TICKETS):

- the category comes from the template's wording (billing, how-to, bug, account, outage);
- the priority comes from the template (a crash is high, a typo low, a partial outage high, a full one urgent);
- the team comes from the subject for how-to, bug and outage tickets (the iOS app → mobile, the API →
  platform), from the template for account tickets (a break-in → security), and is payments for billing.

5 categories × 44 template-subject combinations (11 × 4, or 4 × 11 for how-to) = 220 distinct tickets.
`ticket_split` holds out 8 tickets of each category; each test ticket's template and subject also appear in
training, in other combinations, so a model must combine what it learned rather than recall a ticket.
"""

import random
from dataclasses import dataclass

TEST_PER_CATEGORY = 8


@dataclass(frozen=True)
class Category:
    name: str
    templates: tuple[tuple[str, str, str | None], ...]  # (text with "{s}", priority, team or None: the subject's)
    subjects: tuple[tuple[str, str | None], ...]  # (subject, team or None: the template's)


@dataclass(frozen=True)
class Cell:
    """One ticket: which template and subject it combines, its text and its answer."""

    template: int
    subject: int
    text: str
    answer: str


BILLING = Category(
    "billing",
    templates=(
        ("I was charged twice for {s} this month.", "high", None),
        ("You billed me for {s} after I cancelled it.", "high", None),
        ("My card was charged the wrong amount for {s}.", "high", None),
        ("Why did the price of {s} go up?", "medium", None),
        ("Please cancel {s} at the end of this billing period.", "medium", None),
        ("Can I get a refund for {s}?", "medium", None),
        ("The discount on {s} was not applied to my invoice.", "medium", None),
        ("Can you send me an invoice for {s}?", "low", None),
        ("Is VAT included in the price of {s}?", "low", None),
        ("Please switch {s} to yearly billing.", "low", None),
        ("Could you add our tax ID to the invoices for {s}?", "low", None),
    ),
    subjects=(
        ("the Pro plan", "payments"),
        ("my team seats", "payments"),
        ("the storage add-on", "payments"),
        ("my annual subscription", "payments"),
    ),
)

HOW_TO = Category(
    "how-to",
    templates=(
        ("How do I {s}?", "low", None),
        ("Is there a way to {s}?", "low", None),
        ("Can you point me to the docs on how to {s}?", "low", None),
        ("I need to {s} before our launch tomorrow, how do I do it?", "medium", None),
    ),
    subjects=(
        ("export my projects to CSV", "support"),
        ("invite a teammate to my workspace", "support"),
        ("rename a project", "support"),
        ("turn on dark mode", "support"),
        ("schedule a weekly usage report", "support"),
        ("rotate an API key", "platform"),
        ("set up webhooks for new orders", "platform"),
        ("paginate results from the REST API", "platform"),
        ("use the Python SDK behind a proxy", "platform"),
        ("enable two-factor login for my team", "security"),
        ("restrict sign-ins to our company domain", "security"),
    ),
)

BUG = Category(
    "bug",
    templates=(
        ("{S} crashes when I open settings.", "high", None),
        ("{S} freezes right after the latest update.", "high", None),
        ("{S} loses my changes when I hit save.", "high", None),
        ("{S} shows a blank screen after I upload a file.", "high", None),
        ("{S} is very slow to load since Monday.", "medium", None),
        ("Search in {s} returns nothing for exact names.", "medium", None),
        ("{S} shows dates in the wrong time zone.", "medium", None),
        ("Notifications from {s} arrive twice.", "medium", None),
        ("The buttons in {s} overlap on small screens.", "low", None),
        ("There is a typo on the settings screen of {s}.", "low", None),
        ("Dark mode makes the charts in {s} hard to read.", "low", None),
    ),
    subjects=(
        ("the iOS app", "mobile"),
        ("the Android app", "mobile"),
        ("the web dashboard", "web"),
        ("the admin console", "web"),
    ),
)

ACCOUNT = Category(
    "account",
    templates=(
        ("Can I change the email address on {s}?", "low", "support"),
        ("Please add a second admin to {s}.", "low", "support"),
        ("I'd like to change the display name of {s}.", "low", "support"),
        ("Please merge my old login into {s}.", "low", "support"),
        ("Please delete {s} and all of its data.", "medium", "support"),
        ("I never got the verification email for {s}.", "medium", "support"),
        ("Please transfer ownership of {s} to my colleague.", "medium", "support"),
        ("I'm locked out of {s} after too many password attempts.", "high", "support"),
        ("The password reset link for {s} expired twice already.", "high", "support"),
        ("Someone signed in to {s} from another country.", "urgent", "security"),
        ("I think {s} was hacked, the password was changed.", "urgent", "security"),
    ),
    subjects=(
        ("my account", None),
        ("our team workspace", None),
        ("my company's organization", None),
        ("the shared admin account", None),
    ),
)

OUTAGE = Category(
    "outage",
    templates=(
        ("{S} is down for everyone in our company.", "urgent", None),
        ("{S} returns 500 on every request.", "urgent", None),
        ("{S} has been unreachable for the last hour.", "urgent", None),
        ("{S} times out for all of our users.", "urgent", None),
        ("{S} went offline during our peak hours.", "urgent", None),
        ("Is {s} down? Nothing loads at all.", "urgent", None),
        ("{S} stopped responding after your maintenance window.", "urgent", None),
        ("{S} is down for some of our users in Europe.", "high", None),
        ("{S} fails for about half of our requests.", "high", None),
        ("{S} is intermittently unavailable today.", "high", None),
        ("{S} keeps dropping connections every few minutes.", "high", None),
    ),
    subjects=(
        ("the API", "platform"),
        ("the sync service", "platform"),
        ("the website", "web"),
        ("the dashboard", "web"),
    ),
)

CATEGORIES = (BILLING, HOW_TO, BUG, ACCOUNT, OUTAGE)


def _fill(template: str, subject: str) -> str:
    return template.format(s=subject, S=subject[0].upper() + subject[1:])


def _cells(category: Category) -> list[Cell]:
    """Every template × subject of `category`, in a fixed order."""
    cells = []
    for t, (template, priority, template_team) in enumerate(category.templates):
        for s, (subject, subject_team) in enumerate(category.subjects):
            answer = f"category: {category.name}\npriority: {priority}\nteam: {template_team or subject_team}"
            cells.append(Cell(t, s, _fill(template, subject), answer))
    return cells


def all_tickets() -> list[tuple[str, str]]:
    """The 220 distinct (ticket text, answer) pairs, in a fixed order."""
    pairs = [(cell.text, cell.answer) for category in CATEGORIES for cell in _cells(category)]
    if len({text for text, _ in pairs}) != len(pairs):
        raise AssertionError("duplicate ticket texts")
    return pairs


def _covers(cells: list[Cell], category: Category) -> bool:
    """Whether `cells` use every template and every subject of `category` at least once."""
    templates = {cell.template for cell in cells}
    subjects = {cell.subject for cell in cells}
    return len(templates) == len(category.templates) and len(subjects) == len(category.subjects)


def ticket_split(seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(180 training pairs, 40 test pairs), 8 test tickets per category, both shuffled; fixed by `seed`.

    Pairs are (ticket text, answer); the user message of a chat is f"Ticket: {text}". Every template and
    subject of a test ticket also appears in training (in other combinations).
    """
    rng = random.Random(seed)
    train: list[Cell] = []
    test: list[Cell] = []
    for category in CATEGORIES:
        cells = _cells(category)
        rng.shuffle(cells)
        while not _covers(cells[TEST_PER_CATEGORY:], category):
            rng.shuffle(cells)
        test += cells[:TEST_PER_CATEGORY]
        train += cells[TEST_PER_CATEGORY:]
    rng.shuffle(train)
    rng.shuffle(test)
    return [(cell.text, cell.answer) for cell in train], [(cell.text, cell.answer) for cell in test]
