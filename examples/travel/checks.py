"""The travel assistant's own answer checks: `policy` (never recommend or name a hotel, airline, car rental firm,
restaurant or booking site) and `redirect` (steer an off-topic request back to travel). They plug into tunelab
through its checks seam, like any outsider's check:

    tunelab lab travel --data examples/travel        # loads this file's checks (what `make demo` runs)
    TUNELAB_CHECKS=examples/travel/checks.py:policy,examples/travel/checks.py:redirect tunelab serve
    tunelab compare --checks examples.travel.checks:policy …  # a service that can import it (PYTHONPATH=$PWD)

docs/evaluate.md describes both; tests/test_checks.py holds their examples.
"""

from __future__ import annotations

import re

from tunelab.evaluate.checks import SENTENCE_END, Case, ForbiddenTopics, PolicyCheck, Score, check, words

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

policy = PolicyCheck(TRAVEL, title="Recommends or names hotels, flights/airlines, rental cars or restaurants")


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
