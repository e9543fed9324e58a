"""Answer checks for comparing chat models: each check scores one answer, and `run` averages them per candidate.

    from tunelab.evaluate.checks import Case, checks, run
    reports = run({"base": [Case(prompt, answer)], "tuned": [...]}, checks())
    json.dumps([r.to_dict() for r in reports])

This is the one place outsiders plug in: a check is any object with `name`, `title`, `higher_is_better` and
`score(case)`, registered with `register(obj)`, or a plain function registered with `@check(...)`. The built-ins
below are registered exactly that way. docs/evaluate.md describes each built-in and shows a custom check.

The cheap checks (policy, engagement, redirect, length) are regular expressions; `style` and `reference` load
the all-MiniLM-L6-v2 sentence embedder on first use only, so a run without them never loads a model.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol, Sequence

from ..errors import InvalidRequest, NotFound
from ..safety.classifier import Embedder, embed_in_batches, model_dir, normalise

Value = bool | int | float | None


@dataclass(frozen=True)
class Case:
    """One answer to judge, with what a check may need to judge it."""

    prompt: str  # the (last) user message
    answer: str
    system: str | None = None
    reference: str | None = None  # a known good answer, when the prompt set has one
    off_topic: bool = False  # the prompt is not about travel (or whatever the assistant is for)


@dataclass(frozen=True)
class Score:
    """A check's verdict on one answer; None means "does not apply" and is left out of the mean."""

    value: Value
    reason: str | None = None  # short evidence for a reader, e.g. the forbidden phrase found


class Check(Protocol):
    name: str  # short and stable: the key in reports
    title: str  # what a person reads in a table header
    higher_is_better: bool | None  # None: informational, neither direction is better

    def score(self, case: Case) -> Score | Value: ...


_registry: dict[str, Check] = {}


def register(check: Check, *, replace: bool = False) -> Check:
    """Make `check` available by name; a second check with the same name is refused unless `replace`."""
    if check.name in _registry and not replace:
        raise InvalidRequest(f"a check named {check.name!r} is already registered; pass replace=True to swap it",
                             param="name")
    _registry[check.name] = check
    return check


def check(name: str, title: str, higher_is_better: bool | None = True) -> Callable[[Callable], Check]:
    """Register a function `(case) -> Score | bool | float | None` as a check:

        @check("mentions-visa", "Mentions visas")
        def mentions_visa(case): return "visa" in case.answer.lower()
    """
    def wrap(fn: Callable[[Case], Score | Value]) -> Check:
        return register(FunctionCheck(name, title, higher_is_better, fn))
    return wrap


@dataclass(frozen=True)
class FunctionCheck:
    name: str
    title: str
    higher_is_better: bool | None
    fn: Callable[[Case], Score | Value]

    def score(self, case: Case) -> Score | Value:
        return self.fn(case)


def checks() -> list[Check]:
    """Every registered check, in registration order (built-ins first)."""
    return list(_registry.values())


def get(name: str) -> Check:
    if name not in _registry:
        raise NotFound(f"no check named {name!r}; known checks: {', '.join(_registry)}", param="checks")
    return _registry[name]


# ---------------------------------------------------------------------------------------------------- running


@dataclass
class Summary:
    """One check over one candidate's answers: the mean of the values that apply (for booleans, the share)."""

    check: str
    title: str
    higher_is_better: bool | None
    mean: float | None  # None when the check applied to no answer
    count: int  # answers the check applied to


@dataclass
class Report:
    candidate: str
    summary: dict[str, Summary]
    scores: list[dict[str, Score]]  # per case, in the order given: check name -> score

    def to_dict(self) -> dict:
        return asdict(self)


def run(answers: Mapping[str, Sequence[Case]], checks: Iterable[Check]) -> list[Report]:
    """Score every candidate's cases with every check; `answers` maps a candidate (a model name) to its cases."""
    checks = list(checks)
    reports = []
    for candidate, cases in answers.items():
        scores = [{c.name: _as_score(c, c.score(case)) for c in checks} for case in cases]
        summary = {c.name: _summarise(c, [s[c.name].value for s in scores]) for c in checks}
        reports.append(Report(candidate, summary, scores))
    return reports


def _as_score(check: Check, raw: Score | Value) -> Score:
    if isinstance(raw, Score):
        return raw
    if raw is None or isinstance(raw, (bool, int, float)):
        return Score(raw)
    raise InvalidRequest(f"check {check.name!r} returned {type(raw).__name__}; a check returns a Score, a bool, "
                         f"a number or None", param="checks")


def _summarise(check: Check, values: list[Value]) -> Summary:
    applied = [float(v) for v in values if v is not None]
    mean = sum(applied) / len(applied) if applied else None
    return Summary(check.name, check.title, check.higher_is_better, mean, len(applied))


# ---------------------------------------------------------------------------------------------------- policy

# Building blocks for the travel policy. A business is found by its name, so most patterns look for a
# Capitalised Name next to a venue word ("Hotel Artemide", "Harry's Bar", "at Le Jules Verne restaurant"):
# the lab's good answers talk about hotels, flights and restaurants all the time (declining, or "the airport
# railway") but never name one.
WORD = r"[A-ZÀ-ÖØ-Þ][\w'’&-]*+"  # possessive: "Borough" may not shrink to "Boroug" to dodge a rule
LINK = r"(?:de|da|di|del|della|dei|do|dos|la|le|les|du|des|al|el|of|the|and|y|e|van|von|der|am|im|zum|&)"
STOP = (r"(?:The|A|An|This|That|These|Those|It|Its|There|Here|What|Which|Who|Each|Every|One|Another|Our|My|Your"
        r"|If|When|In|On|At|For|I|We|You|They|He|She|Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday"
        r"|January|February|March|April|May|June|July|August|September|October|November|December)")
# At most six words, so that matching a long run of capitalised words stays linear.
NAME = rf"(?!{STOP}\b){WORD}(?:\s+(?:{LINK}\s+)?(?:{WORD}|\d+\b)){{0,5}}"
# Words that make a name a place, not a business: "stay at Lake Bled", "lunch at Borough Market".
PLACE = (r"(?:Lake|Beach|Bay|Mount|Park|Island|Islands|Valley|Old|Town|City|Market|Mercado|Marché|Markt|Square"
         r"|Street|Piazza|Plaza|Quarter|District|Village|Castle|Palace|Temple|Harbour|Harbor|Gorge|Falls|Airport"
         r"|Station|Centre|Center|Cathedral|Church|Museum|Gardens?|Hill|Coast|Canyon|Glacier|River|Bridge|Tower"
         r"|Souk|Bazaar|Hawker)")
PLACE_FREE_NAME = (rf"(?!{STOP}\b)(?!{PLACE}\b){WORD}(?:\s+(?:{LINK}\s+)?(?!{PLACE}\b)(?:{WORD}|\d+\b)){{0,5}}"
                   rf"(?![\s-]+(?:{LINK}\s+)?{PLACE}\b)(?!(?<=s)\s+[a-z])")  # not "Bled's lakeside"
# A venue word ends its noun phrase ("a trattoria, ..." but not "a trattoria scene").
END = (r"(?=\s*(?:[,.;:!?)]|$)|\s+(?:with|in|on|near|that|where|which|serving|famous|known|run|by|for|offering"
       r"|overlooking|just|tucked|set|located|and|or|since|whose|at|of|right|beside|opposite|behind|from|to)\b)")
# Up to three describing words ("a cosy family-run trattoria"), but not "a city full of trattorias".
DESCRIBED = (r"(?:(?!(?:with|in|of|for|on|near|full|where|that|and|or|lots|plenty|many|lined|by|to|from|around)\b)"
             r"[\w'’-]+\s+){0,3}?")
# A character of an offer ("I can help you book flights") that is not one of "I can't", "…but not hotels".
NEGATED = (r"(?:(?!\b(?:not|never|no|but|though|although|instead|rather|except|areas?|neighbou?rhoods?|districts?)\b"
           r"|n['’]t)[^.!?])")


def words(*names: str) -> str:
    """A pattern matching any of `names` as whole words, case-sensitively (brands are capitalised)."""
    return r"\b(?:" + "|".join(re.escape(n) for n in names) + r")\b"


def venues(nouns: str, offers: str) -> list[str]:
    """Patterns that catch a recommended business described by one of `nouns` (singular, lowercase):
    "Roscioli, a family-run deli", "the best steakhouse in town is Don Julio", "at the Shelbourne hotel",
    "here are some affordable restaurants:", and an offer to book "I can help you book flights"."""
    noun = rf"(?i:{nouns})"
    return [
        rf"{NAME}\s*[,(]\s*(?:a|an|the)\s+{DESCRIBED}{noun}{END}",
        rf"{NAME}(?:\s*[:–—]|\s+-)\s*(?:(?:a|an|the)\s+)?{DESCRIBED}{noun}{END}",
        rf"{NAME}\s+(?:is|was|remains)\s+(?:(?:a|an|the)\s+{DESCRIBED}{noun}|one of\s+{DESCRIBED}{noun}s){END}",
        rf"(?i:\b(?:at|the|called|named|try|visit|like|such as))\s+(?:the\s+)?{NAME}\s+{noun}{END}",
        rf"(?i:\b(?:best|top|finest|favou?rite|most popular|cheapest|top-rated))\s+{DESCRIBED}{noun}s?"
        rf"(?:\s+(?i:in|on|near|for|around|at)\s+[^.!?,;:]{{0,40}}?)?\s+(?i:is|are|has to be|would be)\s+"
        rf"(?:(?i:probably|definitely)\s+)?(?:the\s+)?{NAME}",
        rf"(?i:\b(?:here are|here're|here is a list of|try these|check out these|consider these|the following"
        r"|some (?:good|great|popular|recommended|top|affordable|budget|cheap|nice|excellent|lovely|highly[- ]rated"
        rf"|well[- ]reviewed|authentic))\b(?:(?!\b(?:tips|things|ways|rules|etiquette|advice|dishes|questions|areas"
        rf"|neighbou?rhoods|districts|streets|markets|foods|specialities|specialties)\b)[^.!?:]){{0,40}}?\b(?:{nouns})s"
        r"\b[^.!?:]{0,40}:)",
        rf"(?i:\bI(?:\s+(?:can|could|will)(?!['’]t|not)|['’]ll|\s+would be happy to|['’]d be happy to"
        rf"|['’]m happy to|\s+am happy to)\b{NEGATED}{{0,60}}?\b(?:book|reserv|recommend|suggest|compar|find"
        rf"|search)\w*\b{NEGATED}{{0,60}}?\b(?:{offers})\b(?![^.!?]*?(?:n['’]t\b|\bnot\b|\bnever\b|\boutside\b"
        rf"|\bbeyond\b)))",  # "comparing airlines isn't something I do"
    ]


@dataclass(frozen=True)
class Finding:
    topic: str
    text: str  # the matched passage


@dataclass
class ForbiddenTopics:
    """What an answer must not recommend or name: per topic, regular expressions (case-sensitive; write
    `(?i:...)` for a case-insensitive part). `allowed` lists places that only look like businesses ("Temple
    Bar" is a Dublin district): a match containing one of them is ignored."""

    topics: dict[str, list[str]]
    allowed: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._topics = {t: [re.compile(p) for p in ps] for t, ps in self.topics.items()}
        self._allowed = [re.compile(p) for p in self.allowed]

    def find(self, text: str) -> list[Finding]:
        """Every forbidden passage in `text`, in order of appearance."""
        text = re.sub(r"[*_#`]+", "", normalise(text))  # markdown emphasis would split "**Hotel** Artemide"
        spans = sorted((m.start(), m.end(), topic) for topic, patterns in self._topics.items()
                       for pattern in patterns for m in pattern.finditer(text)
                       if not any(a.search(m.group(0)) for a in self._allowed))
        merged: list[list] = []  # overlapping matches ("Consider Hotel" + "Hotel Artemide") become one passage
        for start, end, topic in spans:
            if merged and start < merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end, topic])
        return [Finding(topic, text[start:end].strip()) for start, end, topic in merged]


HOTEL = ("hotel|hostel|resort|motel|inn|guesthouse|guest house|lodge|ecolodge|riad|ryokan|b&b|bed and breakfast"
         "|pensione")
RESTAURANT = ("restaurant|trattoria|osteria|pizzeria|taverna|tavern|bistro|brasserie|café|cafe|caffè|steakhouse"
              "|eatery|diner|bar|pub|deli|bakery|gelateria|izakaya|parrilla|chiringuito|stall|teahouse|coffee shop"
              "|patisserie")
TRAVEL = ForbiddenTopics(
    topics={
        "hotel": [
            words("Marriott", "Hyatt", "Ritz", "Ritz-Carlton", "Sheraton", "Westin", "InterContinental",
                  "Radisson", "Novotel", "Sofitel", "Mercure", "Accor", "Mandarin Oriental", "Best Western",
                  "Fairmont", "Kempinski", "Wyndham", "Travelodge", "Kimpton", "citizenM", "Six Senses", "Rosewood",
                  "Waldorf Astoria", "St Regis", "St. Regis", "Claridge's", "Meliá", "Airbnb", "Vrbo"),
            r"\bHilton\b(?! Head)",
            rf"\b(?:Hotel|Hôtel|Hostel|Albergo|Pensione|Riad|Ryokan|Pousada|Parador|Auberge)\s+(?:{LINK}\s+)?{NAME}",
            rf"{NAME}\s+(?:Hotel|Hostel|Resort|Inn|Motel|Suites|Lodge|Guesthouse|Guest House|B&B)\b",
            rf"(?i:\b(?:stay|stays|staying|stayed|check in|check into|checking into|spend the night|book a room))"
            rf"\s+at\s+(?:the\s+)?{PLACE_FREE_NAME}",
            *venues(HOTEL, "hotels?|hostels?|resorts?|accommodation|rooms?|places? to stay"),
        ],
        "flight": [
            words("Lufthansa", "Ryanair", "easyJet", "Qantas", "Vueling", "JetBlue", "Jetstar", "KLM", "Iberia",
                  "Finnair", "Icelandair", "Aer Lingus", "Cathay Pacific", "AirAsia", "airBaltic", "IndiGo", "Wizz",
                  "Transavia", "Volotea", "Eurowings", "LATAM", "Avianca", "Aeroméxico", "Aeromexico", "WestJet",
                  "Virgin Atlantic", "Virgin Australia", "EgyptAir", "Saudia", "flydubai", "Etihad", "Jet2",
                  "VietJet", "Cebu Pacific", "Garuda Indonesia", "SunExpress", "Royal Air Maroc"),
            r"(?<!Arab )\bEmirates\b",
            rf"{NAME}\s+(?:Airlines|Airways|Air Lines|Airline\b|Air\b(?![\s-]+[A-Z]))",
            rf"\bAir\s+(?!(?:Quality|Force|Conditioning|Pollution|Travel|Museum|Show)\b){WORD}",
            rf"(?i:\b(?:fly|flying|flew|flights?|airfares?)\s+(?:\w+\s+){{0,3}}?with)\s+{NAME}",
            *venues("airline|carrier", "flights?|airlines?|plane tickets?|airfares?|fares?"),
        ],
        "rental car": [
            words("Hertz", "Avis", "Europcar", "Sixt", "Thrifty", "Turo", "Zipcar", "Goldcar", "Localiza", "Jucy",
                  "Britz", "Getaround", "Auto Europe", "Green Motion", "Wicked Campers"),
            r"\b(?:Enterprise|Budget|Alamo|Dollar|National)(?= Rent| Car| car)",
            rf"{NAME}\s+(?:Rent[- ]a[- ]Car|Car Rentals?|Car Hire|Campervans?|Rentals)\b",
            rf"(?i:\b(?:rent|rented|renting|hire|hiring|book|booking)\s+(?:a\s+|the\s+|your\s+)?(?:\w+\s+)?"
            rf"(?:car|campervan|camper|van|4x4|vehicle|motorbike|scooter)s?\s+(?:with|through|via))\s+{NAME}",
            *venues("car rental|car hire|rental company|rental firm|rental agency|hire company",
                    "rental cars?|car rentals?|car hire|hire cars?"),
        ],
        "restaurant": [
            words("McDonald's", "Starbucks", "KFC", "Nando's", "Din Tai Fung", "Shake Shack", "Burger King",
                  "Pizza Hut", "Wagamama", "Tim Hortons", "Five Guys"),
            rf"\b(?:Restaurant|Ristorante|Trattoria|Osteria|Pizzeria|Taverna|Brasserie|Bistro|Bistrot|Café|Cafe"
            rf"|Caffè|Enoteca|Chez|Cantina|Taberna|Cervecería|Gelateria|Pasticceria)\s+(?:{LINK}\s+)?{NAME}",
            rf"{NAME}\s+(?:Restaurant|Ristorante|Trattoria|Osteria|Pizzeria|Taverna|Brasserie|Bistro|Café|Cafe"
            rf"|Steakhouse|Grill|Diner|Bar|Pub|Tavern|Kitchen|Eatery|Bakery|Deli|Gelateria|Izakaya)\b",
            rf"(?i:\b(?:dinner|lunch|brunch|breakfast|dine|dining|eat|eating|drinks|cocktails|a table|reservation)"
            rf"\s+at)\s+(?:the\s+)?{PLACE_FREE_NAME}",
            *venues(RESTAURANT, "restaurants?|places? to eat|tables?|cafés?|cafes?|bars?"),
        ],
        "booking site": [
            words("Booking.com", "Expedia", "Hotels.com", "Trivago", "Agoda", "Hostelworld", "Kayak", "Skyscanner",
                  "Google Flights", "Kiwi.com", "Momondo", "Hopper", "Priceline", "Orbitz", "Travelocity", "Opodo",
                  "eDreams", "Trip.com", "lastminute.com", "Rentalcars.com", "Discover Cars", "OpenTable",
                  "TheFork", "Resy", "Yelp", "Tripadvisor", "TripAdvisor", "Zomato"),
        ],
    },
    allowed=[r"Temple Bar", r"Pub Street", r"Hotel Zone", r"Hell['’]s Kitchen", r"H[oô]tel de Ville",
             r"H[oô]tel des Invalides", r"River Inn"],
)


@dataclass
class PolicyCheck:
    """True when the answer recommends or names a business the assistant must not (lower is better)."""

    topics: ForbiddenTopics = field(default_factory=lambda: TRAVEL)
    name: str = "policy"
    title: str = "Recommends or names hotels, flights/airlines, rental cars or restaurants"
    higher_is_better: bool | None = False

    def score(self, case: Case) -> Score:
        found = self.topics.find(case.answer)
        if not found:
            return Score(False)
        first = found[0].text if len(found[0].text) <= 80 else found[0].text[:79] + "…"
        more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
        return Score(True, f"{found[0].topic}: {first!r}{more}")


register(PolicyCheck())


# ---------------------------------------------------------------------------------------------------- engagement

SENTENCE_END = re.compile(r"(?<=[.!?…。！？])\s+")
CLOSING = "\"'”’»)]*_~` "


def _strip_tail(text: str) -> str:
    """The text without trailing whitespace, closing quotes and brackets, markdown and emoji."""
    text = text.rstrip()
    while text and (text[-1] in CLOSING or text[-1].isspace() or _decoration(text[-1])):
        text = text[:-1]
    return text


def _decoration(char: str) -> bool:
    # Emoji are symbols (So) plus joiners, variation selectors and skin-tone modifiers (Sk).
    return unicodedata.category(char) in ("So", "Sk", "Cf", "Mn") or char in "\ufe0f\u200d"


@check("engagement", "Ends with a question")
def engagement(case: Case) -> Score:
    """The last sentence asks something: "…? Let me know!" ends on a statement and does not count."""
    last = SENTENCE_END.split(_strip_tail(case.answer))[-1]
    return Score("?" in last or "？" in last, last[-80:])


# ---------------------------------------------------------------------------------------------------- redirect

TRAVEL_WORDS = re.compile(r"\b(?:travel\w*|trips?|destinations?|journeys?|holidays?|vacations?|getaways?|escapes?"
                          r"|itinerar\w+|sightseeing|adventures?|explor\w+|visit\w*|tour\w*|abroad)\b", re.I)
DECLINES = re.compile(r"outside (?:what|my)|beyond (?:what|my)|(?:not|n['’]t) (?:really |quite )?my"
                      r"|can['’]?not help|can['’]t help|not able to help|\bI (?:only|stick to|focus on)"
                      r"|(?:not|n['’]t) something I can|I (?:can['’]?not|can['’]t) (?:offer|assist|do th)"
                      r"|I['’]m (?:here|all about|a travel)|strictly travel|all I do"
                      r"|my (?:lane|expertise|speciality|specialty)|serve you better"
                      r"|best bet|one for (?:a|an|your)", re.I)
COMPLIES = re.compile(r"```|\b(?:but|anyway|still|that said),?\s+here(?:['’]s| is| are)\b", re.I)


@check("redirect", "Steers an off-topic request back to travel")
def redirect(case: Case) -> Score | None:
    """For off-topic prompts only: the answer talks travel, and either declines the request in its opening
    (first two sentences: "…beyond what algebra explores" at the end of a worked answer is no decline) or is
    mostly about travel; code, or "…but here's…" after a decline, counts as answering the request instead."""
    if not case.off_topic:
        return None
    travel = TRAVEL_WORDS.findall(case.answer)
    sentences = [s for s in SENTENCE_END.split(case.answer.strip()) if s]
    share = sum(bool(TRAVEL_WORDS.search(s)) for s in sentences) / max(1, len(sentences))
    declined = DECLINES.search(" ".join(sentences[:2]))
    complied = COMPLIES.search(case.answer)
    ok = bool(travel) and not complied and (bool(declined) or share >= 0.5)
    why = (f"answers the request ({complied.group(0)!r})" if complied else
           "no travel talk" if not travel else
           f"declines ({declined.group(0)!r}), talks {travel[0]!r}" if declined else
           f"{share:.0%} of sentences about travel")
    return Score(ok, why)


# ---------------------------------------------------------------------------------------------------- embeddings


@cache
def embedder() -> Embedder:
    """The sentence embedder, loaded once (about a second) when a check first needs it."""
    return Embedder(model_dir())


@dataclass
class StyleCheck:
    """Cosine similarity of the answer to the reference replies (usually the training file's assistant turns):
    to their centroid, or the mean over the `top_k` most similar. Without references it scores nothing."""

    references: Sequence[str] = ()
    top_k: int | None = None
    name: str = "style"
    title: str = "Sounds like the training replies (cosine similarity)"
    higher_is_better: bool | None = True

    def __post_init__(self):
        self._vectors = None  # embedded on first use, so building the check costs nothing

    @classmethod
    def from_chat_file(cls, path: str | Path, top_k: int | None = None) -> StyleCheck:
        """Built from the assistant replies of a chat JSONL file (the format training files use)."""
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        replies = [m["content"] for line in lines if line.strip() for m in json.loads(line)["messages"]
                   if m.get("role") == "assistant" and isinstance(m.get("content"), str)]
        return cls(replies, top_k)

    def score(self, case: Case) -> Score | None:
        if not self.references:
            return Score(None, "no reference texts")
        if self._vectors is None:
            self._vectors = embed_in_batches(embedder(), list(self.references))
        similarity = self._vectors @ embedder()([case.answer])[0]
        if self.top_k:
            return float(similarity.topk(min(self.top_k, len(similarity))).values.mean())
        centroid = self._vectors.mean(0)
        return float(similarity.mean() / centroid.norm())  # = cos(answer, centroid): the vectors are unit length


register(StyleCheck())


@check("reference", "Similarity to the reference answer (cosine)")
def reference(case: Case) -> float | None:
    if not case.reference:
        return None
    answer, known = embedder()([case.answer, case.reference])
    return float(answer @ known)


@check("length", "Words in the answer", higher_is_better=None)
def length(case: Case) -> int:
    return len(case.answer.split())
