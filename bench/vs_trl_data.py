"""Four deterministic synthetic datasets of different shapes for `bench.vs_trl`, each with a learnable rule.

Every example is a phrasing template filled with pieces (a depot, a customer, a quantity…), and its answer follows
from the pieces by a fixed rule. A split draws distinct examples with a seeded generator: the training ones first,
then test ones, each made only of pieces that training examples also use, in a combination training never has; so
a model must combine what it learned rather than recall an example.

- `dispatch` (routing, three `key: value` lines): a carrier's note on a shipment exception →
  "desk: claims\\nseverity: s1\\nhub: north". The desk and severity come from the template's wording (a broken
  pallet is claims, a seized load s1), the hub from the depot (Leeds → north); the goods named change nothing.
- `orders` (extraction, compact JSON): an order in free text → {"customer":…,"product":…,"quantity":3,
  "city":…,"day":…}; the quantity may be written as a word ("three") and is always a JSON number.
- `intents` (classification, one label): a bank customer's message → one of 8 labels ("lost-card", "fraud"…),
  from the template; the account and the time named change nothing.
- `replies` (short free text, scored by chrF): a delivery status → "Hi Maya, your rice cooker is out for delivery and
  will reach you today." The name and item are copied, the sentence's end follows from the status.

Scores are in points, 0-100: exact match (JSON compared as parsed objects) or sacrebleu's chrF, averaged.
"""

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sacrebleu.metrics.chrf import CHRF

Pair = tuple[str, str]  # (user message, target answer)
Piece = tuple[str, int]  # (slot, index into its table)
Metric = Literal["exact", "chrF"]


@dataclass(frozen=True)
class Split:
    train: list[Pair]
    test: list[Pair]


@dataclass(frozen=True)
class Example:
    pieces: tuple[Piece, ...]
    prompt: str
    answer: str


def _split(draw: Callable[[random.Random], Example], rng: random.Random, n_train: int, n_test: int) -> Split:
    """`n_train` distinct examples, then `n_test` more whose pieces all occur in training, in new combinations."""
    train: list[Example] = []
    test: list[Example] = []
    prompts: set[str] = set()
    for _ in range(200 * (n_train + n_test)):
        if len(test) == n_test:
            return Split([(e.prompt, e.answer) for e in train], [(e.prompt, e.answer) for e in test])
        example = draw(rng)
        if example.prompt in prompts:
            continue
        if len(train) < n_train:
            train.append(example)
        elif set(example.pieces) <= {piece for seen in train for piece in seen.pieces}:
            test.append(example)
        else:
            continue
        prompts.add(example.prompt)
    raise ValueError(f"could not draw {n_train} + {n_test} distinct examples: too few combinations")


def _capital(text: str) -> str:
    return text[0].upper() + text[1:]


def _pick(rng: random.Random, slot: str, table: tuple) -> tuple[Piece, int]:
    index = rng.randrange(len(table))
    return (slot, index), index


# --- dispatch: routing a carrier's exception note to a desk, with a severity and a hub --------------------------------

DISPATCH_TEMPLATES: tuple[tuple[str, str, str], ...] = (  # (text with {goods}/{Goods} and {depot}, desk, severity)
    ("{Goods} arrived at {depot} soaked through after a roof leak.", "claims", "s2"),
    ("Half of the {goods} were found broken on unloading at {depot}.", "claims", "s1"),
    ("A pallet of {goods} tipped over in the yard at {depot} and the wrap is torn.", "claims", "s3"),
    ("The seal on the trailer with the {goods} was cut before it reached {depot}.", "claims", "s1"),
    ("The truck carrying {goods} missed its slot at {depot} by two hours.", "dispatch", "s3"),
    ("{Goods} are stuck at {depot} because the driver called in sick.", "dispatch", "s2"),
    ("Nobody has scanned the {goods} since they left {depot} three days ago.", "dispatch", "s1"),
    ("The {goods} for tomorrow's route are still waiting at {depot}.", "dispatch", "s2"),
    ("Customs at {depot} are holding the {goods} for a missing certificate.", "customs", "s2"),
    ("The invoice for the {goods} at {depot} lists the wrong tariff code.", "customs", "s3"),
    ("Border officers seized the {goods} at {depot} pending inspection.", "customs", "s1"),
    ("The export papers for the {goods} were not filed before they left {depot}.", "customs", "s2"),
    ("The customer refused the {goods} at the door, so they went back to {depot}.", "returns", "s3"),
    ("{Goods} came back to {depot} unopened with no reason given.", "returns", "s3"),
    ("A recall notice came in for {goods} already shipped from {depot}.", "returns", "s1"),
    ("The buyer wants to send back the {goods} collected at {depot} last week.", "returns", "s3"),
    ("The label on the {goods} leaving {depot} has no house number.", "addresses", "s3"),
    ("The {goods} from {depot} were delivered to the neighbour by mistake.", "addresses", "s2"),
    ("The postcode on the {goods} at {depot} does not exist.", "addresses", "s2"),
    ("The {goods} at {depot} are addressed to a company that moved away.", "addresses", "s3"),
)
DEPOTS: tuple[tuple[str, str], ...] = (  # (depot, hub)
    ("the Leeds depot", "north"),
    ("the Glasgow yard", "north"),
    ("the Bristol cross-dock", "west"),
    ("the Cardiff depot", "west"),
    ("the Dover terminal", "south"),
    ("Southampton port", "south"),
    ("the Norwich warehouse", "east"),
    ("Felixstowe port", "east"),
)
GOODS = ("frozen peas", "office chairs", "laptop batteries", "garden tiles", "paper towels", "bicycle frames")


def _dispatch_example(rng: random.Random) -> Example:
    template_piece, t = _pick(rng, "template", DISPATCH_TEMPLATES)
    depot_piece, d = _pick(rng, "depot", DEPOTS)
    goods_piece, g = _pick(rng, "goods", GOODS)
    template, desk, severity = DISPATCH_TEMPLATES[t]
    depot, hub = DEPOTS[d]
    text = template.format(goods=GOODS[g], Goods=_capital(GOODS[g]), depot=depot)
    answer = f"desk: {desk}\nseverity: {severity}\nhub: {hub}"
    return Example((template_piece, depot_piece, goods_piece), f"Carrier note: {text}", answer)


def dispatch(seed: int = 0, n_train: int = 140, n_test: int = 40) -> Split:
    """Routing: a carrier's note → "desk: …\\nseverity: …\\nhub: …" (20 × 8 × 6 = 960 combinations)."""
    return _split(_dispatch_example, random.Random(f"dispatch:{seed}"), n_train, n_test)


# --- orders: extracting an order from free text into compact JSON -----------------------------------------------------

ORDER_TEMPLATES = (
    "{name} would like {qty} {product} sent to {city} on {day}.",
    "Please deliver {qty} {product} to {city} by {day}. Ordered by {name}.",
    "Hi, it's {name}. Can I get {qty} {product}? Ship to {city}, {day} please.",
    "Ship {qty} {product} to {city} for {name}, needed {day}.",
    "{day} delivery: {qty} {product} for {city}, customer {name}.",
    "Could {qty} {product} reach {city} on {day}? Thanks, {name}",
    "New order from {name}: {qty} x {product} to {city}, arriving {day}.",
    "For {name} in {city}: {qty} {product}, deliver on {day}.",
)
CUSTOMERS = (
    "Ana Ruiz",
    "Tom Becker",
    "Priya Nair",
    "Lena Vogel",
    "Omar Haddad",
    "Mei Chen",
    "Jonas Berg",
    "Sara Costa",
    "Kofi Mensah",
    "Ewa Nowak",
)
PRODUCTS = (
    "desk lamps",
    "coffee grinders",
    "yoga mats",
    "steel shelves",
    "rain jackets",
    "wall clocks",
    "bath towels",
    "phone chargers",
)
QUANTITIES = (
    ("2", 2),
    ("3", 3),
    ("4", 4),
    ("5", 5),
    ("6", 6),
    ("7", 7),
    ("8", 8),
    ("9", 9),
    ("two", 2),
    ("three", 3),
    ("four", 4),
    ("five", 5),
    ("six", 6),
    ("seven", 7),
    ("eight", 8),
    ("nine", 9),
)
CITIES = ("Lyon", "Porto", "Utrecht", "Graz", "Gdansk", "Bilbao", "Aarhus", "Turin")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")


def _order_example(rng: random.Random) -> Example:
    pieces = []
    chosen = {}
    for slot, table in (
        ("template", ORDER_TEMPLATES),
        ("name", CUSTOMERS),
        ("product", PRODUCTS),
        ("qty", QUANTITIES),
        ("city", CITIES),
        ("day", DAYS),
    ):
        piece, chosen[slot] = _pick(rng, slot, table)
        pieces.append(piece)
    qty_text, qty = QUANTITIES[chosen["qty"]]
    name, product = CUSTOMERS[chosen["name"]], PRODUCTS[chosen["product"]]
    city, day = CITIES[chosen["city"]], DAYS[chosen["day"]]
    text = ORDER_TEMPLATES[chosen["template"]].format(name=name, qty=qty_text, product=product, city=city, day=day)
    answer = {"customer": name, "product": product, "quantity": qty, "city": city, "day": day}
    return Example(tuple(pieces), f"Order: {text}", json.dumps(answer, separators=(",", ":")))


def orders(seed: int = 0, n_train: int = 140, n_test: int = 40) -> Split:
    """Extraction: an order in free text → compact JSON with customer, product, quantity (a number), city, day."""
    return _split(_order_example, random.Random(f"orders:{seed}"), n_train, n_test)


# --- intents: one label for a bank customer's message -----------------------------------------------------------------

INTENT_TEMPLATES: tuple[tuple[str, str], ...] = (  # (text with {account} and {when}, label)
    ("I lost the card for my {account} {when}.", "lost-card"),
    ("My card for the {account} was stolen {when}, please block it.", "lost-card"),
    ("I can't find the card linked to my {account}; I last had it {when}.", "lost-card"),
    ("A payment from my {account} bounced {when} even though there was money in it.", "failed-payment"),
    ("My rent transfer from the {account} did not go through {when}.", "failed-payment"),
    ("The shop said my {account} card was declined {when}.", "failed-payment"),
    ("There are purchases on my {account} {when} that I never made.", "fraud"),
    ("Someone took money out of my {account} {when} without asking me.", "fraud"),
    ("I got a text {when} asking for the PIN of my {account}; I think it's a scam.", "fraud"),
    ("Why was my {account} charged a monthly fee {when}?", "fees"),
    ("I was charged twice for an overdraft on my {account} {when}.", "fees"),
    ("The fee on my {account} went up {when} and nobody told me.", "fees"),
    ("I moved house {when}; please update the address on my {account}.", "address-change"),
    ("I moved {when} but letters about my {account} still go to my old flat.", "address-change"),
    ("Can I get a statement of what left my {account} {when}?", "statement"),
    ("Please send me the transactions of my {account} {when} as a PDF.", "statement"),
    ("I want to close my {account}; I decided {when}.", "closure"),
    ("Please shut down the {account} I opened {when}.", "closure"),
    ("How much could I borrow against my {account}? I asked {when} but got no answer.", "loan"),
    ("I'd like a car loan; I applied through my {account} {when} and heard nothing.", "loan"),
)
ACCOUNTS = ("current account", "savings account", "business account", "joint account", "student account")
TIMES = ("yesterday", "this morning", "last week", "on Friday", "two days ago")
INTENTS = tuple(sorted({label for _, label in INTENT_TEMPLATES}))


def _intent_example(rng: random.Random) -> Example:
    template_piece, t = _pick(rng, "template", INTENT_TEMPLATES)
    account_piece, a = _pick(rng, "account", ACCOUNTS)
    when_piece, w = _pick(rng, "when", TIMES)
    template, label = INTENT_TEMPLATES[t]
    text = template.format(account=ACCOUNTS[a], when=TIMES[w])
    return Example((template_piece, account_piece, when_piece), f"Message: {text}", label)


def intents(seed: int = 0, n_train: int = 140, n_test: int = 40) -> Split:
    """Classification: a bank customer's message → one of 8 labels (20 × 5 × 5 = 500 combinations)."""
    return _split(_intent_example, random.Random(f"intents:{seed}"), n_train, n_test)


# --- replies: a one-sentence customer reply for a delivery status -----------------------------------------------------

REPLY_TEMPLATES = (
    "Customer {name} asks about the {item}; status: {status}.",
    "{name} wants to know where the {item} is. Tracking says: {status}.",
    "Reply to {name} about the {item} ({status}).",
    "Status of the {item} for {name}: {status}. Write the reply.",
    "{name} emailed about the {item}. Current state: {status}.",
)
FIRST_NAMES = ("Maya", "Lucas", "Ines", "Noah", "Zara", "Felix", "Amara", "Hugo", "Nina", "Ravi")
ITEMS = (
    "rice cooker",
    "blue kettle",
    "garden hose",
    "desk chair",
    "winter coat",
    "camera bag",
    "floor lamp",
    "board game",
)
STATUSES: tuple[tuple[str, str], ...] = (  # (status in the note, how the reply ends)
    ("out for delivery", "is out for delivery and will reach you today"),
    ("held at customs", "is being checked by customs, which usually takes two days"),
    ("damaged in transit", "was damaged on the way, so we are sending a replacement"),
    ("left at the depot", "is waiting at our depot, ready for you to collect"),
    ("address unclear", "could not be delivered because we need your full address"),
    ("delayed by weather", "is delayed by bad weather and will arrive a day late"),
    ("delivered to a neighbour", "was handed to your neighbour for safe keeping"),
    ("returned to sender", "went back to the sender, who will contact you soon"),
)


def _reply_example(rng: random.Random) -> Example:
    template_piece, t = _pick(rng, "template", REPLY_TEMPLATES)
    name_piece, n = _pick(rng, "name", FIRST_NAMES)
    item_piece, i = _pick(rng, "item", ITEMS)
    status_piece, s = _pick(rng, "status", STATUSES)
    status, reply = STATUSES[s]
    text = REPLY_TEMPLATES[t].format(name=FIRST_NAMES[n], item=ITEMS[i], status=status)
    answer = f"Hi {FIRST_NAMES[n]}, your {ITEMS[i]} {reply}."
    return Example((template_piece, name_piece, item_piece, status_piece), f"Delivery note: {text}", answer)


def replies(seed: int = 0, n_train: int = 140, n_test: int = 40) -> Split:
    """Short free text: a delivery status → "Hi {name}, your {item} {what the status means}." (scored by chrF)."""
    return _split(_reply_example, random.Random(f"replies:{seed}"), n_train, n_test)


# --- scoring ----------------------------------------------------------------------------------------------------------

_CHRF = CHRF()


def exact(answer: str, target: str) -> float:
    """100 when the answer is the target, after stripping whitespace at both ends; else 0."""
    return 100.0 if answer.strip() == target.strip() else 0.0


def json_exact(answer: str, target: str) -> float:
    """100 when the answer parses to the same JSON value as the target (key order and spacing aside); else 0."""
    try:
        return 100.0 if json.loads(answer) == json.loads(target) else 0.0
    except ValueError:
        return 0.0


def chrf(answer: str, target: str) -> float:
    """sacrebleu's sentence chrF, 0-100."""
    return float(_CHRF.sentence_score(answer.strip(), [target.strip()]).score)


@dataclass(frozen=True)
class Dataset:
    name: str
    shape: str
    metric: Metric
    make: Callable[[int, int, int], Split]  # (seed, n_train, n_test)
    score: Callable[[str, str], float]  # (answer, target) → 0-100


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset("dispatch", "routing: 3 key: value lines", "exact", dispatch, exact),
        Dataset("orders", "extraction: compact JSON, 5 fields", "exact", orders, json_exact),
        Dataset("intents", "classification: 1 of 8 labels", "exact", intents, exact),
        Dataset("replies", "free text: one sentence", "chrF", replies, chrf),
    )
}


def chat(prompt: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
