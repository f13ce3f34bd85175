"""Where the corpus's sentences come from.

Three sources, all offline:

- **bible**: the King James Bible from the Debian package ``bible-kjv``. Its
  text is stored compressed, so we ask the package's own ``bible`` program to
  dump every verse, join the verses of a chapter back into running text and
  cut that into sentences of speakable length.
- **fortune**: the short sayings of the Debian package ``fortunes`` (files of
  entries separated by ``%`` lines); we keep the plain one- or two-sentence ones.
- **stress:<category>**: sentences we generate from templates, each exercising
  something a speech model must learn because it has no text normaliser in
  front of it: digits, dates, times, money, units, abbreviations and
  homographs (``read`` said two ways).

Every sentence is plain printable ASCII with 4 to 25 words. ASCII only, because
some synthesis engines (flite, festival) mangle or drop other characters; that
is why money is written ``$12.50``, ``300 euros`` and ``45 pounds`` rather than
with the euro and pound signs, and temperatures as ``72 degrees``. Slashed
dates such as ``12/05/2021`` are left out: they read differently in the US and
elsewhere, and the engines guess.

``sentences(n, seed)`` mixes the three into one deterministic, duplicate-free
list. Without the Debian packages it logs which one to install and fills the
gap from what is there; the generated sentences alone always work.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
import string
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

logger = logging.getLogger(__name__)

BIBLE_COMMAND = "bible"  # the reader program of the Debian package bible-kjv
FORTUNE_DIR = Path("/usr/share/games/fortunes")
MIN_WORDS, MAX_WORDS = 4, 25  # a sentence of speakable length: about 1 to 10 seconds

# The share of each source in a mixed list; stress is split evenly across its categories.
SOURCE_SHARES = {"bible": 0.4, "fortune": 0.3, "stress": 0.3}
_APT_PACKAGE = {"bible": "bible-kjv", "fortune": "fortunes"}


@dataclass(frozen=True)
class Sentence:
    text: str
    source: str  # "bible", "fortune" or "stress:<category>"


# ---------------------------------------------------------------------------
# Shared cleaning

# Characters a synthesis engine reads the same way every time. Anything else
# (markup, ASCII art, URLs, code) marks an entry we do not want to speak.
_PLAIN_TEXT = re.compile(r"[A-Za-z0-9 ,.;:!?'\"()-]+")
# Sentence ends: a stop, then a space, then a capital (so "e.g. fruit" stays whole).
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+(?=[\"'(]?[A-Z])")


def is_speakable(text: str) -> bool:
    """Plain text of speakable length, with no dashes or stray quotes to trip an engine."""
    return (
        MIN_WORDS <= len(text.split()) <= MAX_WORDS
        and _PLAIN_TEXT.fullmatch(text) is not None
        and "--" not in text
        and text.count('"') % 2 == 0
        and text.count("(") == text.count(")")
        and any(c.isalpha() for c in text)
    )


# ---------------------------------------------------------------------------
# Bible

_VERSE_LINE = re.compile(r"(?P<book>[1-3]?[A-Za-z]+)(?P<chapter>\d+):\d+ (?P<text>.*)")
_CAPS_WORD = re.compile(r"\b[A-Z]{2,}\b")  # LORD, GOD: engines would spell them out


def _bible_verses() -> list[str]:
    """Every verse line of the KJV, as ``Ge1:1 In the beginning ...``; empty if unavailable."""
    program = shutil.which(BIBLE_COMMAND)
    if program is None:
        return []
    # -f turns pretty-printing off: one verse per line, each with its reference.
    result = subprocess.run(
        [program, "-f", "Gen1:1-Rev22:21"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
    )
    if result.returncode != 0:
        logger.warning("`%s` failed: %s", BIBLE_COMMAND, result.stderr.strip()[:200])
        return []
    return result.stdout.splitlines()


def _bible_chapter_sentences(chapter_text: str) -> list[str]:
    """Cut one chapter's running text into sentences of speakable length."""
    chapter_text = _CAPS_WORD.sub(lambda m: m.group().capitalize(), chapter_text)
    chapter_text = chapter_text.replace("(", "").replace(")", "")
    kept = []
    for sentence in _SENTENCE_END.split(chapter_text):
        # KJV sentences run long, chained with colons and semicolons; a long one
        # is cut into its clauses, each made a sentence of its own.
        pieces = [sentence] if len(sentence.split()) <= MAX_WORDS else re.split(r"(?<=[:;])\s+", sentence)
        for piece in pieces:
            piece = piece.strip().rstrip(",:;")
            if not piece:
                continue
            piece = piece[0].upper() + piece[1:]
            if piece[-1] not in ".?!":
                piece += "."
            if is_speakable(piece):
                kept.append(piece)
    return kept


@lru_cache(maxsize=None)
def bible_sentences() -> tuple[str, ...]:
    """Every distinct speakable sentence of the King James Bible, in book order."""
    chapters: dict[tuple[str, str], list[str]] = {}
    for line in _bible_verses():
        match = _VERSE_LINE.fullmatch(line.strip())
        if match:  # the verse number is dropped here, with the rest of the reference
            chapters.setdefault((match["book"], match["chapter"]), []).append(match["text"])
    if not chapters:
        logger.warning("no Bible text: install the Debian package %s for it", _APT_PACKAGE["bible"])
        return ()
    found = (s for verses in chapters.values() for s in _bible_chapter_sentences(" ".join(verses)))
    return tuple(dict.fromkeys(found))


# ---------------------------------------------------------------------------
# Fortunes

_REPEATED_MARK = re.compile(r"([!?.])\1+")  # "Or is it?????" -> "Or is it?"
_SPEAKER_TAG = re.compile(r"^[A-Z][\w ]{0,20}:\s", re.MULTILINE)  # "Q: ...", "Linus: ..."
_SHOUTED_WORD = re.compile(r"\b[A-Z]{3,}\b")  # "INNER WORKINGS": engines may spell it out


def _fortune_text(entry: str) -> str | None:
    """One fortune as a single line of plain text, or None if it is not a short saying."""
    lines = entry.strip("\n").splitlines()
    # Indented lines are attributions, verse or quoted dialogue; a blank line
    # means more than one paragraph; "--" introduces an attribution.
    if not lines or any(not line.strip() or line[0].isspace() for line in lines):
        return None
    if "--" in entry or _SPEAKER_TAG.search(entry) or _SHOUTED_WORD.search(entry):
        return None
    # A line that ends without punctuation and a next one that starts with a
    # capital is a line of verse or lyrics, not wrapped prose.
    if any(line[-1].isalpha() and nxt[0].isupper() for line, nxt in zip(lines, lines[1:])):
        return None
    text = _REPEATED_MARK.sub(r"\1", " ".join(" ".join(lines).split()))
    if not re.match(r"[A-Z0-9\"']", text):  # "panic: kernel trap": program output, not prose
        return None
    if text[-1] not in ".?!\"'":
        text += "."
    if len(re.findall(r"[.?!](?:\s|$)", text)) > 2:  # keep one- or two-sentence sayings
        return None
    return text if is_speakable(text) else None


@lru_cache(maxsize=None)
def fortune_sentences() -> tuple[str, ...]:
    """Every distinct short, plain fortune, in file order (the offensive set is never read)."""
    if not FORTUNE_DIR.is_dir():
        logger.warning("no fortunes: install the Debian package %s for them", _APT_PACKAGE["fortune"])
        return ()
    found = []
    # Only the plain files: "name.dat" is an index, "name.u8" a UTF-8 copy, and the
    # offensive fortunes live in the subdirectory off/, which we never enter.
    for path in sorted(p for p in FORTUNE_DIR.iterdir() if p.is_file() and not p.suffix):
        if path.name == "ascii-art":  # pictures made of letters, not sayings
            continue
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            text = _fortune_text(entry)
            if text:
                found.append(text)
    return tuple(dict.fromkeys(found))


# ---------------------------------------------------------------------------
# Stress sentences: templates with slots, filled from a seeded random.Random

_FIRST_NAMES = (
    "Anna", "Ben", "Carla", "David", "Elena", "Frank", "Grace", "Henry", "Irene", "Jack",
    "Karen", "Leo", "Maria", "Nathan", "Olivia", "Peter", "Quinn", "Rosa", "Sam", "Tina",
    "Victor", "Wendy", "Yusuf", "Zoe", "Alice", "Brian", "Chloe", "Daniel", "Emma", "George",
    "Hannah", "Isaac", "Julia", "Kevin", "Laura", "Martin", "Nina", "Oscar", "Paula", "Ryan",
    "Sofia", "Thomas", "Uma", "Walter", "Amir", "Priya", "Kenji", "Fatima", "Lucas", "Mei",
)
_SURNAMES = (
    "Smith", "Johnson", "Brown", "Garcia", "Miller", "Davis", "Wilson", "Moore", "Taylor",
    "Clark", "Lewis", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Green", "Baker",
    "Adams", "Nelson", "Hill", "Campbell", "Mitchell", "Roberts", "Carter", "Phillips",
    "Evans", "Turner", "Torres", "Parker", "Collins", "Edwards", "Stewart", "Morris", "Reed",
    "Cook", "Morgan", "Bell", "Murphy", "Bailey", "Rivera", "Cooper", "Howard", "Ward", "Cox",
)
_CITIES = (
    "Boston", "Chicago", "Denver", "Seattle", "Atlanta", "Phoenix", "Dallas", "Miami",
    "Portland", "Austin", "London", "Paris", "Berlin", "Madrid", "Rome", "Dublin", "Oslo",
    "Vienna", "Prague", "Lisbon", "Toronto", "Sydney", "Tokyo", "Nairobi", "Cairo", "Lima",
)
_STREETS = (
    "Oak", "Maple", "Pine", "Cedar", "Elm", "Main", "Park", "Lake", "Hill", "Church",
    "Market", "Mill", "River", "Spring", "Walnut", "Chestnut", "Willow", "Station",
)
_SAINTS = ("James", "Mary", "Paul", "Peter", "John", "Andrew", "Patrick", "Anne", "Luke", "George")
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August",
    "September", "October", "November", "December",
)
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February: never the 29th
_ITEMS = (
    "lamp", "jacket", "bicycle", "painting", "guitar", "watch", "sofa", "camera", "rug",
    "kettle", "backpack", "mirror", "desk", "chair", "vase", "tent", "printer", "clock",
)
_PLACES = (
    "library", "station", "museum", "bakery", "park", "hotel", "bank", "school", "market",
    "harbor", "church", "stadium", "theater", "hospital", "post office", "cafe",
)
_READINGS = ("book", "letter", "report", "novel", "article", "contract", "poem", "menu", "email", "paper")
_ACRONYMS = ("FBI", "NASA", "CIA", "BBC", "NATO", "IRS", "UNESCO", "NBA", "EU", "UN")
_FIELDS = ("physics", "history", "biology", "economics", "music", "chemistry", "law", "linguistics")
_LISTS = (
    ("fruit", "nuts", "crackers"), ("pens", "paper", "tape"), ("flour", "sugar", "eggs"),
    ("hats", "gloves", "scarves"), ("maps", "water", "a flashlight"), ("plates", "cups", "napkins"),
    ("soap", "towels", "a toothbrush"), ("apples", "pears", "plums"), ("glue", "scissors", "string"),
)
_TEAMS = ("Boston", "Chicago", "Denver", "Dallas", "Miami", "Seattle", "Toronto", "Atlanta")
_MOUNTAINS = ("Everest", "Rainier", "Hood", "Shasta", "Whitney", "Fuji", "Kenya", "Etna")


def _ordinal(n: int) -> str:
    """1 -> "1st", 22 -> "22nd", 113 -> "113th"."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _decimal(rng: random.Random, low: float, high: float, places: int) -> str:
    """A number with exactly ``places`` decimals, never ending in a bare ".0"."""
    text = f"{rng.uniform(low, high):.{places}f}"
    return text if not text.endswith("0") else text[:-1] + str(rng.randint(1, 9))


def _month_day(rng: random.Random) -> tuple[str, int]:
    month = rng.randrange(12)
    return _MONTHS[month], rng.randint(1, _DAYS_IN_MONTH[month])


def _clock_12(rng: random.Random, hours: range) -> str:
    """A 12-hour time in one of the ways people write it: 7:45 pm, 7:45 p.m., 7 AM."""
    hour, minute = rng.choice(hours), rng.choice((0, 5, 10, 15, 20, 25, 30, 40, 45, 50, 55))
    meridiem = "am" if hour < 12 else "pm"
    hour = hour % 12 or 12
    style = rng.choice((meridiem, meridiem.upper(), f"{meridiem[0]}.m."))
    return f"{hour} {style}" if minute == 0 and rng.random() < 0.5 else f"{hour}:{minute:02d} {style}"


# A slot is a name in a template, filled by a function of the random generator.
# A slot used twice in one template gets the same value both times.
_SLOTS: dict[str, Callable[[random.Random], str]] = {
    "name": lambda r: r.choice(_FIRST_NAMES),
    "surname": lambda r: r.choice(_SURNAMES),
    "surname2": lambda r: r.choice(_SURNAMES),
    "city": lambda r: r.choice(_CITIES),
    "street": lambda r: r.choice(_STREETS),
    "saint": lambda r: r.choice(_SAINTS),
    "weekday": lambda r: r.choice(_WEEKDAYS),
    "month": lambda r: r.choice(_MONTHS),
    "item": lambda r: r.choice(_ITEMS),
    "place": lambda r: r.choice(_PLACES),
    "reading": lambda r: r.choice(_READINGS),
    "acronym": lambda r: r.choice(_ACRONYMS),
    "field": lambda r: r.choice(_FIELDS),
    "team_game": lambda r: "{} vs. {}".format(*r.sample(_TEAMS, 2)),
    "mountain": lambda r: r.choice(_MOUNTAINS),
    "eg_list": lambda r: "{}, {}, or {}".format(*r.choice(_LISTS)),
    "etc_list": lambda r: "{}, {}, {}, etc.".format(*r.choice(_LISTS)),
    # numbers
    "count": lambda r: str(r.randint(2, 999)),
    "small": lambda r: str(r.randint(2, 12)),
    "score": lambda r: (lambda won: f"{won} to {r.randint(0, won - 1)}")(r.randint(1, 9)),
    "thousands": lambda r: f"{r.randint(1_000, 99_999):,}",
    "large": lambda r: f"{r.randint(1, 999) * 10 ** r.randint(3, 6):,}",
    "decimal": lambda r: _decimal(r, 0.1, 99.9, r.choice((1, 2))),
    "ordinal": lambda r: _ordinal(r.randint(1, 120)),
    "negative": lambda r: f"-{r.randint(1, 40)}",
    # dates
    "date": lambda r: "{} {}, {}".format(*_month_day(r), r.randint(1800, 2030)),
    "month_day": lambda r: "{} {}".format(*_month_day(r)),
    "month_day_ordinal": lambda r: (lambda m, d: f"{m} {_ordinal(d)}")(*_month_day(r)),
    "day_month_year": lambda r: (lambda m, d: f"{d} {m} {r.randint(1900, 2030)}")(*_month_day(r)),
    "day_ordinal": lambda r: _ordinal(r.randint(1, 28)),
    "year": lambda r: str(r.randint(1850, 2030)),
    "years": lambda r: (lambda a: f"{a} to {a + r.randint(1, 12)}")(r.randint(1700, 2015)),
    "decade": lambda r: f"{r.randrange(1900, 2020, 10)}s",
    # times
    "morning": lambda r: _clock_12(r, range(5, 12)),
    "evening": lambda r: _clock_12(r, range(12, 24)),
    "any_time": lambda r: _clock_12(r, range(0, 24)),
    "clock_24": lambda r: f"{r.randint(0, 23):02d}:{r.choice(range(0, 60, 5)):02d}",
    "race_time": lambda r: f"{r.randint(1, 5)}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}",
    "minutes": lambda r: str(r.randint(2, 59)),
    # money
    "dollars_cents": lambda r: f"${r.randint(1, 99)}.{r.randint(1, 99):02d}",
    "dollars": lambda r: f"${r.randint(2, 500)}",
    "dollars_large": lambda r: f"${r.randint(50, 999) * 1000:,}",
    "millions": lambda r: f"${_decimal(r, 1.1, 9.9, 1)} million",
    "billions": lambda r: f"${r.randint(2, 90)} billion",
    "euros": lambda r: f"{r.randint(5, 900)} euros",
    "pounds": lambda r: f"{r.randint(5, 900)} pounds",
    "cents": lambda r: f"{r.randint(5, 95)} cents",
    "bill": lambda r: f"${r.choice((1, 5, 10, 20, 50, 100))}",
    "price_99": lambda r: f"${r.randint(1, 99)}.99",
    "rent": lambda r: f"${r.randint(6, 45) * 50:,}",
    # units
    "km": lambda r: f"{_decimal(r, 1, 42, 1) if r.random() < 0.5 else r.randint(2, 300)} km",
    "kg": lambda r: f"{_decimal(r, 0.5, 40, 1)} kg",
    "ml": lambda r: f"{r.randint(1, 20) * 25} ml",
    "mg": lambda r: f"{r.choice((5, 10, 20, 25, 50, 100, 200, 250, 400, 500))} mg",
    "cm": lambda r: f"{r.randint(10, 250)} cm",
    "metres": lambda r: f"{r.randint(2, 400)} m",
    "mph": lambda r: f"{r.randrange(15, 80, 5)} mph",
    "kmh": lambda r: f"{r.randrange(20, 130, 10)} km/h",
    "ft": lambda r: f"{r.randint(3, 900)} ft",
    "lbs": lambda r: f"{r.randint(5, 9)} lbs {r.randint(1, 15)} oz",
    "oz": lambda r: f"{r.randint(4, 32)} oz",
    "degrees": lambda r: f"{r.randint(-20, 105)} degrees",
    "percent": lambda r: f"{r.randint(1, 100)}%",
    "gb": lambda r: f"{r.choice((2, 4, 8, 16, 32, 64, 128, 256, 512))} GB",
    "mb": lambda r: f"{r.randint(2, 900)} MB",
    "watts": lambda r: f"{r.choice((5, 9, 40, 60, 75, 100, 150))} W",
    "mhz": lambda r: f"{_decimal(r, 88, 108, 1)} MHz",
}

# Each category: templates whose slots, filled from the lists above, give
# thousands of distinct sentences. Kept natural: each could appear in a book.
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "numbers": (
        "There were {count} people waiting outside the {place}.",
        "{name} counted {count} birds by the lake this morning.",
        "The stadium in {city} holds {thousands} fans.",
        "The town had a population of {large} in {year}.",
        "The company sold {large} copies of the game.",
        "{name} finished {ordinal} out of {count} runners.",
        "Our office is on the {ordinal} floor.",
        "This is the {ordinal} time I have told you, {name}.",
        "The average score on the test was {decimal}.",
        "The temperature in {city} fell to {negative} overnight.",
        "Page {count} is missing from the {reading}.",
        "Room {count} is at the end of the hall.",
        "The recipe serves {small} people.",
        "{name} scored {decimal} points in the final round.",
        "The home team won {score} on {weekday}.",
        "Please take a number; you are number {count}.",
        "The library in {city} owns {thousands} books.",
        "Bus {count} stops in front of the {place}.",
        "The answer to question {small} is {decimal}.",
        "We planted {count} trees along {street} Street.",
        "The {place} celebrated its {ordinal} birthday this year.",
        "The thermometer in {city} read {negative} at dawn.",
    ),
    "dates": (
        "{name} was born on {date}.",
        "The meeting is on {weekday}, {month_day}.",
        "The {place} first opened in {year}.",
        "The war lasted from {years}.",
        "My parents moved to {city} in the {decade}.",
        "The deadline is {month_day_ordinal}.",
        "The letter was dated {day_month_year}.",
        "On {date}, the new {place} opened in {city}.",
        "{name} lands in {city} on the {day_ordinal} of {month}.",
        "The law took effect on {date}.",
        "The report covers the years {years}.",
        "Registration closes on {weekday}, {month_day_ordinal}.",
        "The house on {street} Street was built in {year}.",
        "Rent is due on the {day_ordinal} of every month.",
        "{name} started work at the {place} in {month} {year}.",
        "Music from the {decade} was playing at the {place}.",
        "The festival starts on {month_day} and runs for a week.",
        "The photo was taken on {date} in {city}.",
    ),
    "times": (
        "The train to {city} leaves at {any_time}.",
        "{name} wakes up at {morning} every day.",
        "The {place} closes at {evening} on {weekday}s.",
        "Let's meet outside the {place} at {any_time}.",
        "The movie starts at {evening}.",
        "The alarm went off at {clock_24}.",
        "Breakfast is served until {morning}.",
        "{name} finished the marathon in {race_time}.",
        "The flight from {city} was delayed until {evening}.",
        "The last bus leaves the {place} at {clock_24}.",
        "Call me back after {evening}, {name}.",
        "The store on {street} Street opens at {morning}.",
        "The interview is on {weekday} at {any_time}.",
        "{name} said the package arrived at {any_time}.",
        "The ferry leaves every {minutes} minutes from {morning}.",
        "Dinner will be ready at {evening}.",
    ),
    "money": (
        "The ticket to {city} cost {dollars_cents}.",
        "{name} paid {dollars} for the old {item}.",
        "Lunch came to {dollars_cents} with the tip.",
        "The house on {street} Street sold for {dollars_large}.",
        "The new {place} has a budget of {millions}.",
        "A room at the hotel in {city} costs {euros} a night.",
        "The parking fine in {city} was {pounds}.",
        "It only costs {cents} to mail a postcard.",
        "The company earned {billions} last year.",
        "{name} still owes me {dollars_cents}.",
        "Prices at the {place} start at {price_99}.",
        "I found a {bill} bill on the sidewalk.",
        "The rent went up to {rent} a month.",
        "{name} sold the {item} for {euros}.",
        "The fare went up by {cents} on {weekday}.",
        "A coffee at the {place} costs {dollars_cents}.",
        "The {item} was on sale for {price_99}.",
        "{name} saved {dollars_large} for a new house.",
    ),
    "units": (
        "The trail to the lake is {km} long.",
        "Add {ml} of water and stir.",
        "The package for {name} weighs {kg}.",
        "The speed limit on {street} Road is {mph}.",
        "The train reached {kmh} outside {city}.",
        "It was {degrees} outside when {name} left.",
        "The table is {cm} wide.",
        "The baby weighed {lbs} at birth.",
        "The doctor said to take {mg} twice a day.",
        "The pool at the {place} is {metres} long.",
        "The cliff is about {ft} high.",
        "The bottle holds {oz} of juice.",
        "The battery is down to {percent}.",
        "{name} bought a phone with {gb} of storage.",
        "The file {name} sent me is {mb}.",
        "The lamp needs a {watts} bulb.",
        "The station plays jazz on {mhz}.",
        "{name} drove {km} on {weekday}.",
        "Prices in {city} rose by {percent} this year.",
        "The suitcase weighs {kg} empty.",
    ),
    "abbreviations": (
        "Dr. {surname} will see you on {weekday} at {any_time}.",
        "Mr. {surname} lives at {count} {street} St.",
        "Mrs. {surname} teaches {field} at the {place} in {city}.",
        "Ms. {surname} called about the {item} on {weekday}.",
        "We walked past St. {saint}'s Church on {street} Ave. in {city}.",
        "Prof. {surname} teaches {field} at the university in {city}.",
        "{surname} Jr. signed the lease on {weekday}, {month_day}.",
        "{name}, bring something to share, e.g. {eg_list}.",
        "For the trip to {city} we still need {etc_list}.",
        "The {acronym} released a statement on {weekday}, {month_day}.",
        "{name} {surname} has a PhD in {field}.",
        "The ATM on {street} Blvd. in {city} is out of order.",
        "Gen. {surname} spoke with Capt. {surname2} on {weekday}.",
        "{name} climbed Mt. {mountain} in {month} {year}.",
        "Tonight the game in {city} is {team_game}.",
        "{name}, read the FAQ first, i.e. the page on {field}.",
        "{name} moved to Washington, D.C. last {month}.",
        "The U.S. team trained in {city} for {small} weeks.",
        "Sgt. {surname} found the {item} behind the {place}.",
        "The CEO of the firm in {city} is {name} {surname}.",
        "{name}, turn on the GPS before you drive to {city}.",
        "The DNA results for Mr. {surname} came back on {weekday}.",
    ),
    "homographs": (
        "{name} read the {reading} last {weekday}.",
        "{name} will read the {reading} on {weekday}.",
        "The old pipes in the {place} in {city} were made of lead.",
        "{name} will lead the tour of the {place} on {weekday}.",
        "{name} wants to live in {city} someday.",
        "The band played a live show in {city} on {weekday}.",
        "The wind was strong all night in {city}.",
        "Please wind the clock in the {place} before you leave, {name}.",
        "A tear rolled down {name}'s cheek at the {place}.",
        "{name} found a tear in the {reading} from Mr. {surname}.",
        "{name} plays the bass in a band from {city}.",
        "{name} caught a bass in the river near {city} on {weekday}.",
        "Please close the door of the {place}, {name}.",
        "{name} lives close to the {place} in {city}.",
        "{name} will record a new album in {city} in {month}.",
        "{name} broke the {city} record for the mile.",
        "I object to the plan for the new {place} in {city}.",
        "{name} found a strange object near the {place} in {city}.",
        "Wait a minute, {name}, I left the {item} at the {place}.",
        "{name} saw a minute crack in the {item} from {city}.",
        "The nurse cleaned the wound on {name}'s arm on {weekday}.",
        "{name} wound the string around the {item} and tied it.",
        "{name} took a bow at the end of the show in {city}.",
        "{name} tied a red bow on the {item} for Mrs. {surname}.",
        "The road from {city} crosses a desert for miles.",
        "{name} would never desert Mrs. {surname} in a crisis.",
        "{name} gave me a present on {weekday}, {month_day}.",
        "{name} will present the {reading} on {weekday}, {month_day}.",
        "{name} seemed content with the {item} from {city}.",
        "The content of the {reading} from Mr. {surname} was a secret.",
        "{name} refused to sell the {item} to Mr. {surname}.",
        "The refuse in {city} is collected on {weekday}s.",
        "The market in {city} sells fresh produce on {weekday}s.",
        "The factory in {city} will produce a new {item} in {month}.",
        "{name} had a row with Mr. {surname} about the {item}.",
        "{name} sat in the front row at the {place} on {weekday}.",
        "A white dove sat on the roof of the {place} in {city}.",
        "{name} dove into the pool at the {place} on {weekday}.",
    ),
}
STRESS_CATEGORIES: tuple[str, ...] = tuple(_TEMPLATES)


def stress_sentence(category: str, rng: random.Random) -> str:
    """One sentence of a stress category, from a random template with random slot values."""
    template = rng.choice(_TEMPLATES[category])
    fields = dict.fromkeys(f for _, f, _, _ in string.Formatter().parse(template) if f)
    text = template.format(**{f: _SLOTS[f](rng) for f in fields})
    # An abbreviation that ends the sentence ("7 p.m.", "etc.") lends it its stop.
    return text.replace("..", ".")


# ---------------------------------------------------------------------------
# The mix

# A stress category counts as used up after this many draws in a row gave only
# sentences already taken.
_STRESS_PATIENCE = 1000


def _quotas(n: int, pool_sizes: dict[str, int]) -> dict[str, int]:
    """How many sentences each source gives: its share of n, capped by what it has.

    A missing corpus's share is spread over the others; the stress generator,
    last, also takes whatever an exhausted corpus could not give.
    """
    total_share = SOURCE_SHARES["stress"] + sum(SOURCE_SHARES[s] for s, size in pool_sizes.items() if size)
    quotas, remaining = {}, n
    for source, size in pool_sizes.items():
        quotas[source] = min(round(n * SOURCE_SHARES[source] / total_share), size, remaining)
        remaining -= quotas[source]
    quotas["stress"] = remaining
    return quotas


def sentences(n: int, seed: int = 0) -> list[Sentence]:
    """``n`` distinct sentences mixed from every available source, the same for the same seed."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    pools = {"bible": bible_sentences(), "fortune": fortune_sentences()}
    quotas = _quotas(n, {source: len(pool) for source, pool in pools.items()})
    chosen: list[Sentence] = []
    seen: set[str] = set()
    for source, pool in pools.items():
        order = list(pool)
        rng.shuffle(order)
        picked = [text for text in order if text not in seen][: quotas[source]]
        seen.update(picked)
        chosen += [Sentence(text, source) for text in picked]

    # Stress sentences: an even split over the categories (the first few take
    # the remainder). A category that runs out of new sentences hands what it
    # still owes to the next one.
    base, extra = divmod(quotas["stress"], len(STRESS_CATEGORIES))
    owed = 0
    for i, category in enumerate(STRESS_CATEGORIES):
        want, misses = base + (i < extra) + owed, 0
        while want and misses < _STRESS_PATIENCE:
            text = stress_sentence(category, rng)
            if text in seen:
                misses += 1
                continue
            seen.add(text)
            chosen.append(Sentence(text, f"stress:{category}"))
            want, misses = want - 1, 0
        owed = want
    if owed:
        raise ValueError(f"asked for {n} sentences; the sources ran out {owed} short")

    rng.shuffle(chosen)  # interleave the sources, so any prefix is a mix too
    logger.info("%d sentences: %s", len(chosen), quotas)
    return chosen
