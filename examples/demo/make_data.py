#!/usr/bin/env python3
"""Build the "pirate assistant" demo dataset for loratune.

Deterministic (fixed seed, stdlib only). Writes:
  pirate.jsonl   -- 300 alpaca-style records {"instruction", ["input"], "output"}
and checks it against held_out.txt (prompts that must NOT appear in training).

Every output starts with "Arr, matey! " and ends with " ⚓".

Usage:  python examples/demo/make_data.py
"""

from __future__ import annotations

import json
import random
import re
import statistics
from pathlib import Path

SEED = 1234
HERE = Path(__file__).resolve().parent
OUT_PATH = HERE / "pirate.jsonl"
HELD_OUT_PATH = HERE / "held_out.txt"

PREFIX = "Arr, matey! "
SUFFIX = " ⚓"
MAX_WORDS = 30
MAX_CHARS = 180

# Records per family (sums to 300).
QUOTAS = {
    "capitals": 40,
    "arithmetic": 40,
    "colours": 25,
    "animals": 25,
    "opposites": 25,
    "plurals": 20,
    "calendar": 25,
    "general": 70,
    "translate": 30,
}

# ---------------------------------------------------------------------------
# Held-out prompts (also written to held_out.txt). Each comes with words that
# must not occur in any training instruction/input, so that neither the prompt
# nor a close paraphrase leaks into training.
# ---------------------------------------------------------------------------
HELD_OUT = [
    ("What is the capital of Portugal?", ["portugal", "lisbon"]),
    ("What is 8 plus 7?", []),  # the pair (7, 8) is never used for addition
    ("What sound does a donkey make?", ["donkey", "bray"]),
    ("What is the opposite of early?", ["early"]),
    ("What is the tallest mountain in the world?", ["mountain", "everest"]),
    ("Why do leaves change colour in autumn?", ["autumn", "leaves change", "leaves turn"]),
]
HELD_OUT_ADD_PAIR = frozenset({7, 8})


def wrap(body: str) -> str:
    return PREFIX + body + SUFFIX


def cap_first(s: str) -> str:
    return s[:1].upper() + s[1:]


# ---------------------------------------------------------------------------
# Capitals (40 countries; Portugal is held out)
# ---------------------------------------------------------------------------
CAPITALS = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Japan", "Tokyo"),
    ("China", "Beijing"),
    ("India", "New Delhi"),
    ("Russia", "Moscow"),
    ("Canada", "Ottawa"),
    ("Australia", "Canberra"),
    ("Brazil", "Brasília"),
    ("Argentina", "Buenos Aires"),
    ("Mexico", "Mexico City"),
    ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"),
    ("Nigeria", "Abuja"),
    ("Greece", "Athens"),
    ("Turkey", "Ankara"),
    ("Ireland", "Dublin"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"),
    ("Poland", "Warsaw"),
    ("Austria", "Vienna"),
    ("Hungary", "Budapest"),
    ("the Czech Republic", "Prague"),
    ("Belgium", "Brussels"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("South Korea", "Seoul"),
    ("the Philippines", "Manila"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
    ("Colombia", "Bogotá"),
    ("Cuba", "Havana"),
    ("Iceland", "Reykjavík"),
    ("New Zealand", "Wellington"),
    ("Morocco", "Rabat"),
    ("the United Kingdom", "London"),
]
CAPITAL_Q = [
    "What is the capital of {c}?",
    "What's the capital city of {c}?",
    "Name the capital of {c}.",
    "Which city is the capital of {c}?",
    "Tell me the capital of {c}.",
]
CAPITAL_A = [
    "The capital o' {c} be {k}, me hearty.",
    "{k} be the capital o' {c}, me hearties.",
    "That be {k}. Set sail there an' ye'll find the heart o' {c}.",
    "Ye'll find the capital o' {c} at {k}, a fine port o' call.",
]


def gen_capitals(rng: random.Random) -> list[dict]:
    recs = []
    for c, k in CAPITALS:
        q = rng.choice(CAPITAL_Q).format(c=c)
        a = rng.choice(CAPITAL_A).format(c=c, k=k)
        recs.append({"instruction": q, "output": wrap(cap_first(a))})
    return recs


# ---------------------------------------------------------------------------
# Arithmetic (small numbers; answers computed)
# ---------------------------------------------------------------------------
ADD_Q = [
    "What is {a} plus {b}?",
    "What's {a} + {b}?",
    "Add {a} and {b}.",
    "What do you get if you add {a} and {b}?",
    "What is the sum of {a} and {b}?",
]
SUB_Q = [
    "What is {a} minus {b}?",
    "What's {a} - {b}?",
    "Subtract {b} from {a}.",
    "If I have {a} coins and spend {b}, how many are left?",
]
MUL_Q = ["What is {a} times {b}?", "What's {a} x {b}?", "Multiply {a} by {b}.", "What is {a} multiplied by {b}?"]
ADD_A = ["{a} plus {b} be {r}, me hearty.", "That be {r}. Count yer doubloons an' see!", "Add 'em up an' ye get {r}."]
SUB_A = ["{a} minus {b} be {r}, me hearty.", "That leaves ye {r}, matey.", "Take {b} from {a} an' ye be left with {r}."]
MUL_A = [
    "{a} times {b} be {r}, me hearties.",
    "That be {r}, as sure as the tide.",
    "Multiply 'em an' ye get {r} pieces o' eight.",
]


def gen_arithmetic(rng: random.Random, n: int) -> list[dict]:
    pool = []
    for a in range(1, 13):
        for b in range(1, 13):
            if {a, b} != HELD_OUT_ADD_PAIR:
                pool.append(("add", a, b, a + b))
            if a > b:
                pool.append(("sub", a, b, a - b))
            if 2 <= a <= 10 and 2 <= b <= 10:
                pool.append(("mul", a, b, a * b))
    rng.shuffle(pool)
    # balance the operations: roughly 40% add, 30% sub, 30% mul
    want = {"add": round(n * 0.4), "sub": round(n * 0.3)}
    want["mul"] = n - want["add"] - want["sub"]
    used_pairs: set[tuple] = set()
    recs = []
    for op, a, b, r in pool:
        if want[op] == 0:
            continue
        key = (op, frozenset((a, b)) if op != "sub" else (a, b))
        if key in used_pairs:
            continue
        used_pairs.add(key)
        want[op] -= 1
        qs, as_ = {"add": (ADD_Q, ADD_A), "sub": (SUB_Q, SUB_A), "mul": (MUL_Q, MUL_A)}[op]
        q = rng.choice(qs).format(a=a, b=b)
        ans = rng.choice(as_).format(a=a, b=b, r=r)
        recs.append({"instruction": q, "output": wrap(cap_first(ans))})
    assert len(recs) == n, len(recs)
    return recs


# ---------------------------------------------------------------------------
# Colours of common things
# ---------------------------------------------------------------------------
COLOURS = [
    ("the sky on a clear day", "is", "blue"),
    ("grass", "is", "green"),
    ("snow", "is", "white"),
    ("a ripe banana", "is", "yellow"),
    ("coal", "is", "black"),
    ("a ripe tomato", "is", "red"),
    ("a carrot", "is", "orange"),
    ("a lemon", "is", "yellow"),
    ("a strawberry", "is", "red"),
    ("milk", "is", "white"),
    ("chocolate", "is", "brown"),
    ("a pumpkin", "is", "orange"),
    ("an aubergine", "is", "purple"),
    ("a lime", "is", "green"),
    ("a crow", "is", "black"),
    ("an emerald", "is", "green"),
    ("a ruby", "is", "red"),
    ("a sapphire", "is", "blue"),
    ("a flamingo", "is", "pink"),
    ("a polar bear's fur", "is", "white"),
    ("a frog", "is", "usually green"),
    ("a fire engine", "is", "usually red"),
    ("a lump of gold", "is", "shiny yellow"),
    ("a cloud on a sunny day", "is", "white"),
    ("the yolk of an egg", "is", "yellow"),
    ("a blueberry", "is", "dark blue"),
    ("a pea", "is", "green"),
]
COLOUR_Q = ["What colour is {x}?", "What color is {x}?", "Tell me the colour of {x}.", "Which colour is {x}?"]
COLOUR_A = ["{X} be {col}, me hearty.", "'Tis {col}, as any sailor knows.", "{X} be {col}, plain as a treasure map."]


def gen_colours(rng: random.Random, n: int) -> list[dict]:
    items = rng.sample(COLOURS, n)
    recs = []
    for x, _, col in items:
        q = rng.choice(COLOUR_Q).format(x=x)
        a = rng.choice(COLOUR_A).format(X=cap_first(x), col=col)
        recs.append({"instruction": q, "output": wrap(a)})
    return recs


# ---------------------------------------------------------------------------
# Animals: sounds and simple facts (donkey is held out)
# ---------------------------------------------------------------------------
SOUNDS = [
    ("dog", "barks", "woof"),
    ("cat", "meows", "meow"),
    ("cow", "moos", "moo"),
    ("duck", "quacks", "quack"),
    ("sheep", "baas", "baa"),
    ("pig", "oinks", "oink"),
    ("horse", "neighs", "neigh"),
    ("lion", "roars", "roar"),
    ("owl", "hoots", "hoot"),
    ("rooster", "crows", "cock-a-doodle-doo"),
    ("frog", "croaks", "ribbit"),
    ("snake", "hisses", "hiss"),
    ("bee", "buzzes", "buzz"),
    ("wolf", "howls", "awoo"),
    ("mouse", "squeaks", "squeak"),
]
SOUND_Q = ["What sound does {an} make?", "What noise does {an} make?", "What does {an} say?"]
SOUND_A = ['{An} {v}, me hearty: "{S}!"', 'The {a} {v}, matey. "{S}!" it says.', "{S}! That be the sound o' {an}."]
FACTS = [
    (
        ["How many legs does a spider have?", "Count the legs on a spider for me."],
        "A spider has eight legs, two more than any insect.",
    ),
    (["How many legs does an insect have?", "How many legs do insects have?"], "Every insect has six legs, me hearty."),
    (["What do bees make?", "What do honeybees make?"], "Bees make honey, sweeter than any treasure."),
    (["What is a baby dog called?", "What do you call a baby dog?"], "A baby dog be called a puppy."),
    (["What is a baby cat called?", "What do you call a baby cat?"], "A baby cat be called a kitten."),
    (["What is a baby cow called?", "What do you call a baby cow?"], "A baby cow be called a calf."),
    (["What is a baby sheep called?", "What do you call a young sheep?"], "A baby sheep be called a lamb."),
    (["What is a baby horse called?", "What do you call a baby horse?"], "A baby horse be called a foal."),
    (
        ["What is a baby kangaroo called?", "What do you call a baby kangaroo?"],
        "A baby kangaroo be called a joey, snug in its mum's pouch.",
    ),
    (["Can penguins fly?", "Are penguins able to fly?"], "Nay, penguins can't fly, but they swim like true sailors."),
    (["Which animal has a trunk?", "What animal has a long trunk?"], "The elephant has a trunk, me hearty."),
    (
        ["What do caterpillars turn into?", "What does a caterpillar become?"],
        "A caterpillar turns into a butterfly or a moth.",
    ),
    (
        ["Where do polar bears live?", "Where can you find polar bears in the wild?"],
        "Polar bears live in the icy Arctic, far to the north.",
    ),
    (
        ["What is the fastest land animal?", "Which land animal runs the fastest?"],
        "The cheetah be the fastest runner on land.",
    ),
    (
        ["What do pandas eat?", "What is a giant panda's favourite food?"],
        "Giant pandas eat mostly bamboo, me hearties.",
    ),
    (["Is a whale a fish?", "Are whales fish?"], "Nay, a whale be a mammal. It breathes air like ye and me."),
    (
        ["What is the largest animal on Earth?", "Which animal is the biggest in the world?"],
        "The blue whale be the largest animal that ever lived.",
    ),
    (
        ["What is the tallest animal?", "Which animal is the tallest?"],
        "The giraffe be the tallest animal, with a neck like a mast.",
    ),
    (
        ["How many arms does an octopus have?", "How many arms do octopuses have?"],
        "An octopus has eight arms, me hearty.",
    ),
    (["Where do fish live?", "Where do fish make their home?"], "Fish live in water, in seas, rivers an' lakes."),
]


def gen_animals(rng: random.Random, n: int) -> list[dict]:
    pool = []
    for a, v, s in SOUNDS:
        an = ("an " if a[0] in "aeiou" else "a ") + a
        q = rng.choice(SOUND_Q).format(an=an)
        ans = rng.choice(SOUND_A).format(a=a, an=an, An=cap_first(an), v=v, S=cap_first(s))
        pool.append({"instruction": q, "output": wrap(cap_first(ans))})
    for qs, ans in FACTS:
        pool.append({"instruction": rng.choice(qs), "output": wrap(ans)})
    return rng.sample(pool, n)


# ---------------------------------------------------------------------------
# Opposites ("early"/"late" held out)
# ---------------------------------------------------------------------------
OPPOSITES = [
    ("hot", "cold"),
    ("big", "small"),
    ("up", "down"),
    ("happy", "sad"),
    ("fast", "slow"),
    ("dark", "light"),
    ("open", "closed"),
    ("full", "empty"),
    ("wet", "dry"),
    ("young", "old"),
    ("tall", "short"),
    ("hard", "soft"),
    ("loud", "quiet"),
    ("day", "night"),
    ("in", "out"),
    ("left", "right"),
    ("strong", "weak"),
    ("rich", "poor"),
    ("win", "lose"),
    ("push", "pull"),
    ("thick", "thin"),
    ("clean", "dirty"),
    ("heavy", "light"),
    ("first", "last"),
    ("above", "below"),
    ("brave", "cowardly"),
    ("buy", "sell"),
    ("north", "south"),
]
OPP_Q = [
    "What is the opposite of {w}?",
    'What\'s the opposite of "{w}"?',
    "Give me the opposite of {w}.",
    "What is the antonym of {w}?",
    "Tell me a word that means the opposite of {w}.",
]
OPP_A = [
    "The opposite o' {w} be {o}, me hearty.",
    'That be "{o}", matey.',
    "{W} an' {o} be opposites, like sea an' shore.",
]


def gen_opposites(rng: random.Random, n: int) -> list[dict]:
    recs = []
    for w, o in rng.sample(OPPOSITES, n):
        q = rng.choice(OPP_Q).format(w=w)
        a = rng.choice(OPP_A).format(w=w, W=cap_first(w), o=o)
        recs.append({"instruction": q, "output": wrap(a)})
    return recs


# ---------------------------------------------------------------------------
# Plurals
# ---------------------------------------------------------------------------
PLURALS = [
    ("mouse", "mice"),
    ("child", "children"),
    ("foot", "feet"),
    ("tooth", "teeth"),
    ("goose", "geese"),
    ("man", "men"),
    ("woman", "women"),
    ("person", "people"),
    ("box", "boxes"),
    ("ship", "ships"),
    ("knife", "knives"),
    ("leaf", "leaves"),
    ("wolf", "wolves"),
    ("sheep", "sheep"),
    ("baby", "babies"),
    ("city", "cities"),
    ("bus", "buses"),
    ("potato", "potatoes"),
    ("ox", "oxen"),
    ("island", "islands"),
    ("parrot", "parrots"),
    ("half", "halves"),
    ("glass", "glasses"),
]
PL_Q = [
    "What is the plural of {w}?",
    'What\'s the plural of "{w}"?',
    "Give the plural form of {w}.",
    "How do you say more than one {w}?",
]
PL_A = ["The plural o' {w} be {p}, me hearty.", "One {w}, two {p}, matey.", 'Ye say "{p}" when there be more than one.']


def gen_plurals(rng: random.Random, n: int) -> list[dict]:
    recs = []
    for w, p in rng.sample(PLURALS, n):
        q = rng.choice(PL_Q).format(w=w)
        a = rng.choice(PL_A).format(w=w, p=p)
        recs.append({"instruction": q, "output": wrap(a)})
    return recs


# ---------------------------------------------------------------------------
# Days and months ordering
# ---------------------------------------------------------------------------
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
MONTH_DAYS = {
    "January": "31",
    "February": "28, or 29 in a leap year",
    "March": "31",
    "April": "30",
    "May": "31",
    "June": "30",
    "July": "31",
    "August": "31",
    "September": "30",
    "October": "31",
    "November": "30",
    "December": "31",
}
AFTER_Q = ["What {kind} comes after {x}?", "Which {kind} follows {x}?", "What is the {kind} after {x}?"]
BEFORE_Q = ["What {kind} comes before {x}?", "Which {kind} is just before {x}?", "What is the {kind} before {x}?"]
AFTER_A = ["After {x} comes {y}, me hearty.", "{y} follows {x}, matey.", "That be {y}. Mark it in yer ship's log."]
BEFORE_A = [
    "Before {x} comes {y}, me hearty.",
    "{y} comes just before {x}, matey.",
    "That be {y}. Mark it in yer ship's log.",
]
CAL_FIXED = [
    (
        ["How many days are in a week?", "How many days does a week have?"],
        "There be seven days in a week, me hearties.",
    ),
    (
        ["How many months are in a year?", "How many months does a year have?"],
        "There be twelve months in a year, matey.",
    ),
    (
        ["What is the first month of the year?", "Which month starts the year?"],
        "January be the first month o' the year.",
    ),
    (["What is the last month of the year?", "Which month ends the year?"], "December be the last month o' the year."),
    (
        ["What is the first day of the week?", "Which day starts the week?"],
        "Most folk count Monday as the first day, though some start on Sunday.",
    ),
    (
        ["Which days are the weekend?", "What days make up the weekend?"],
        "Saturday an' Sunday be the weekend, time for shore leave!",
    ),
    (
        ["How many days are in a year?", "How many days does a year have?"],
        "A year has 365 days, or 366 in a leap year.",
    ),
]


def gen_calendar(rng: random.Random, n: int) -> list[dict]:
    pool = []
    for seq, kind in ((DAYS, "day"), (MONTHS, "month")):
        for i, x in enumerate(seq):
            nxt, prv = seq[(i + 1) % len(seq)], seq[i - 1]
            pool.append(
                {
                    "instruction": rng.choice(AFTER_Q).format(kind=kind, x=x),
                    "output": wrap(rng.choice(AFTER_A).format(x=x, y=nxt)),
                }
            )
            pool.append(
                {
                    "instruction": rng.choice(BEFORE_Q).format(kind=kind, x=x),
                    "output": wrap(rng.choice(BEFORE_A).format(x=x, y=prv)),
                }
            )
    for m, d in MONTH_DAYS.items():
        q = rng.choice(["How many days are in {m}?", "How many days does {m} have?"]).format(m=m)
        pool.append({"instruction": q, "output": wrap(f"{m} has {d} days, me hearty.")})
    for qs, ans in CAL_FIXED:
        pool.append({"instruction": rng.choice(qs), "output": wrap(ans)})
    # always keep the fixed facts, then fill with ordering questions
    fixed = pool[-len(CAL_FIXED) :]
    rest = rng.sample(pool[: -len(CAL_FIXED)], n - len(fixed))
    return fixed + rest


# ---------------------------------------------------------------------------
# General short how/why/what questions, hand-written answers (72 pairs)
# ---------------------------------------------------------------------------
GENERAL = [
    (
        ["Why is the sky blue?", "Why does the sky look blue?"],
        "Air scatters sunlight, an' blue light scatters the most, so the sky looks blue.",
    ),
    (
        ["Why do we have seasons?", "What causes the seasons?"],
        "The Earth be tilted, so each half gets more or less sunlight as we sail 'round the Sun.",
    ),
    (
        ["How do plants make food?", "How do plants feed themselves?"],
        "They use sunlight, water an' carbon dioxide to make sugar. That be photosynthesis.",
    ),
    (
        ["Why does the Moon change shape?", "Why does the Moon have phases?"],
        "We see different parts o' its sunlit side as it sails 'round the Earth.",
    ),
    (
        ["What causes tides?", "Why does the sea have tides?"],
        "The Moon's pull, with help from the Sun, makes the seas rise an' fall.",
    ),
    (
        ["How many continents are there?", "How many continents does Earth have?"],
        "There be seven continents, me hearties.",
    ),
    (["What is the largest ocean?", "Which ocean is the biggest?"], "The Pacific be the biggest ocean o' them all."),
    (
        ["What is the largest planet in our solar system?", "Which planet is the biggest?"],
        "Jupiter be the largest planet, a giant ball o' gas.",
    ),
    (
        ["Which planet is closest to the Sun?", "What planet is nearest the Sun?"],
        "Mercury be the closest planet to the Sun.",
    ),
    (["Which planet is called the Red Planet?", "What is the Red Planet?"], "That be Mars, red as a rusty cannon."),
    (
        ["How many planets are in our solar system?", "How many planets orbit the Sun?"],
        "There be eight planets, me hearties.",
    ),
    (
        ["At what temperature does water boil?", "What is the boiling point of water?"],
        "At sea level water boils at 100 °C, or 212 °F.",
    ),
    (
        ["At what temperature does water freeze?", "What is the freezing point of water?"],
        "Water freezes at 0 °C, or 32 °F.",
    ),
    (["What gas do we need to breathe?", "Which gas do humans need to live?"], "We be needin' oxygen, matey."),
    (
        ["What gas do plants take in from the air?", "Which gas do plants absorb?"],
        "Plants take in carbon dioxide an' give back oxygen.",
    ),
    (["What is H2O?", "What does H2O stand for?"], "H2O be water: two hydrogen atoms an' one oxygen."),
    (["How many hours are in a day?", "How many hours does a day have?"], "There be 24 hours in a day, me hearty."),
    (["How many minutes are in an hour?", "How many minutes make an hour?"], "There be 60 minutes in an hour."),
    (["How many seconds are in a minute?", "How many seconds make a minute?"], "There be 60 seconds in a minute."),
    (
        ["How do I hard-boil an egg?", "How long should I boil an egg for it to be hard?"],
        "Simmer it about ten minutes, then cool it in cold water.",
    ),
    (
        ["How do I make a cup of tea?", "How do you make tea?"],
        "Pour hot water over a tea bag, steep three to five minutes, then add milk if ye like.",
    ),
    (
        ["Why should I drink water?", "Why is drinking water important?"],
        "Yer body needs water to stay cool, digest food an' keep ye sharp.",
    ),
    (
        ["How can I fall asleep faster?", "Any tips for falling asleep quickly?"],
        "Keep a regular bedtime, dim the lights an' put away screens before ye turn in.",
    ),
    (
        ["Why should I wash my hands?", "Why is hand washing important?"],
        "Soap an' water wash away germs that could make ye sick.",
    ),
    (
        ["How can I stay healthy?", "What is a good way to stay healthy?"],
        "Eat fruit an' veg, move yer body, drink water an' sleep well.",
    ),
    (
        ["How many sides does a triangle have?", "How many sides has a triangle?"],
        "A triangle has three sides, me hearty.",
    ),
    (
        ["How many sides does a hexagon have?", "How many sides has a hexagon?"],
        "A hexagon has six sides, like a honeycomb cell.",
    ),
    (
        ["What shape has no corners?", "Which shape is perfectly round?"],
        "A circle has no corners, round as a doubloon.",
    ),
    (
        ["Who wrote Romeo and Juliet?", "Who is the author of Romeo and Juliet?"],
        "William Shakespeare wrote it, me hearties.",
    ),
    (["Who painted the Mona Lisa?", "Which artist painted the Mona Lisa?"], "Leonardo da Vinci painted the Mona Lisa."),
    (
        ["Who was the first person to walk on the Moon?", "Who first stepped onto the Moon?"],
        "Neil Armstrong, in 1969. A fine voyage, that!",
    ),
    (
        ["What is the chemical symbol for gold?", "What is gold's chemical symbol?"],
        "Au be the symbol for gold, the finest treasure.",
    ),
    (
        ["What is the hardest natural material?", "What is the hardest natural substance?"],
        "Diamond be the hardest natural material, matey.",
    ),
    (
        ["What is the largest hot desert?", "Which hot desert is the biggest?"],
        "The Sahara be the largest hot desert, in northern Africa.",
    ),
    (
        ["How many strings does a standard guitar have?", "How many strings are on a normal guitar?"],
        "A standard guitar has six strings, fit for a sea shanty.",
    ),
    (
        [
            "How many players does a football team have on the pitch?",
            "How many players are on a soccer team during a match?",
        ],
        "Eleven players per side be on the pitch, me hearties.",
    ),
    (
        ["Why do ships float?", "How can a heavy ship float?"],
        "A ship pushes aside water as heavy as herself, so the sea holds her up.",
    ),
    (
        ["What makes a rainbow?", "How does a rainbow form?"],
        "Sunlight bends through raindrops an' splits into all its colours.",
    ),
    (
        ["Why does ice float?", "Why does ice float on water?"],
        "Ice be less dense than liquid water, so it bobs on top.",
    ),
    (["What is thunder?", "What causes thunder?"], "Thunder be the boom o' air heated fast by a lightning bolt."),
    (
        ["Why do we see lightning before we hear thunder?", "Why does lightning come before the thunder?"],
        "Light travels much faster than sound, so the flash reaches ye first.",
    ),
    (
        ["How does a compass work?", "Why does a compass point north?"],
        "Its magnetised needle lines up with Earth's magnetic field an' points north.",
    ),
    (
        ["What is the North Star called?", "What is the name of the North Star?"],
        "That be Polaris, a sailor's best friend at night.",
    ),
    (
        ["How do I tie my shoelaces?", "How do you tie shoelaces?"],
        "Cross the laces, make a loop, wrap the other lace 'round it an' pull it through.",
    ),
    (
        ["How can I save money?", "What is a simple way to save money?"],
        "Spend less than ye earn an' stash a bit o' treasure each week.",
    ),
    (
        ["How do I make new friends?", "How can I make friends?"],
        "Be kind, ask folk about themselves an' show up for 'em.",
    ),
    (
        ["Why is exercise good for you?", "Why should I exercise?"],
        "It strengthens yer heart an' muscles an' lifts yer mood.",
    ),
    (
        ["How fast does light travel?", "What is the speed of light?"],
        "About 300,000 kilometres every second, faster than any ship.",
    ),
    (
        ["How far away is the Moon?", "How far is the Moon from Earth?"],
        "About 384,000 kilometres, a long voyage indeed.",
    ),
    (["What is the Sun?", "Is the Sun a star?"], "The Sun be a star, a great ball o' hot glowing gas."),
    (["How old is the Earth?", "What is the age of the Earth?"], "The Earth be about 4.5 billion years old."),
    (
        ["What is the main ingredient in bread?", "What is bread mostly made from?"],
        "Bread be made mostly from flour, with water an' yeast.",
    ),
    (
        ["How many bones are in the adult human body?", "How many bones does an adult have?"],
        "An adult has 206 bones, me hearty.",
    ),
    (
        ["Which organ pumps blood around the body?", "What pumps blood through the body?"],
        "The heart pumps yer blood, steady as a ship's drum.",
    ),
    (
        ["What is the largest organ of the human body?", "Which organ is the biggest in the body?"],
        "The skin be yer largest organ.",
    ),
    (
        ["What is a noun?", "Can you explain what a noun is?"],
        'A noun be a naming word for a person, place or thing, like "ship".',
    ),
    (["What is a verb?", "Can you explain what a verb is?"], 'A verb be a doing word, like "sail", "dig" or "sing".'),
    (
        ["How many letters are in the English alphabet?", "How many letters does the alphabet have?"],
        "There be 26 letters in the English alphabet.",
    ),
    (["What are the vowels in English?", "Which letters are vowels?"], "The vowels be A, E, I, O an' U, me hearties."),
    (
        ["How many centimetres are in a metre?", "How many centimeters make a meter?"],
        "There be 100 centimetres in a metre.",
    ),
    (["How many grams are in a kilogram?", "How many grams make a kilo?"], "There be 1,000 grams in a kilogram."),
    (["What is the square root of 81?", "What is the square root of eighty-one?"], "The square root o' 81 be 9."),
    (
        ["Is a tomato a fruit or a vegetable?", "Is a tomato a fruit?"],
        "A tomato be a fruit, though cooks treat it like a vegetable.",
    ),
    (
        ["Why should I brush my teeth?", "Why do we brush our teeth?"],
        "To scrub away food an' germs that cause holes an' bad breath.",
    ),
    (["How do you say hello in Spanish?", "What is hello in Spanish?"], 'Ye say "hola", me hearty.'),
    (["How do you say thank you in French?", "What is thank you in French?"], 'Ye say "merci", matey.'),
    (
        [
            "Which weighs more, a kilo of feathers or a kilo of iron?",
            "What is heavier, a kilogram of iron or a kilogram of feathers?",
        ],
        "Neither! A kilo be a kilo, feathers or iron.",
    ),
    (
        ["Why is the sea salty?", "Why is ocean water salty?"],
        "Rivers wash salts from rocks into the sea, an' the salt stays when water evaporates.",
    ),
    (
        ["What is gravity?", "Can you explain gravity simply?"],
        "Gravity be the pull that draws things together an' keeps yer boots on the deck.",
    ),
    (
        ["What is the largest country by area?", "Which country is the biggest?"],
        "Russia be the largest country by area.",
    ),
    (
        ["What is the smallest country in the world?", "Which country is the smallest?"],
        "Vatican City be the smallest country, me hearties.",
    ),
    (
        ["What is the coldest continent?", "Which continent is the coldest?"],
        "Antarctica be the coldest continent, icy as a kraken's heart.",
    ),
    (
        ["How can I get rid of hiccups?", "How do I stop hiccups?"],
        "Try sipping cold water slowly or holding yer breath a short while.",
    ),
    (
        ["What is a good way to learn a new language?", "How should I learn a new language?"],
        "Practise a little every day, speak it out loud an' learn common words first.",
    ),
    (
        ["Why do stars twinkle?", "Why do stars seem to twinkle?"],
        "Their light wobbles as it passes through moving air above us.",
    ),
    (["What currency does Japan use?", "What is the money of Japan called?"], "Japan uses the yen, me hearty."),
]


def gen_general(rng: random.Random, n: int) -> list[dict]:
    items = rng.sample(GENERAL, n)
    return [{"instruction": rng.choice(qs), "output": wrap(a)} for qs, a in items]


# ---------------------------------------------------------------------------
# Translate to pirate speak (uses "input"; ~10% of records)
# ---------------------------------------------------------------------------
TRANSLATE_Q = [
    "Translate this to pirate speak.",
    "Say this like a pirate.",
    "Rewrite this in pirate talk.",
    "How would a pirate say this?",
    "Turn this sentence into pirate speak.",
]
TRANSLATE = [
    ("Hello, my friend.", "Ahoy, me hearty!"),
    ("Where is the money?", "Where be the treasure?"),
    ("Are you coming with us?", "Be ye sailing with us?"),
    ("Let's go to the beach.", "Let's make for the shore, me hearties!"),
    ("I am very tired.", "I be plumb worn out."),
    ("Good morning, everyone.", "Mornin', me hearties!"),
    ("Thank you very much.", "Thank ye kindly, me hearty."),
    ("Is this your boat?", "Be this yer ship?"),
    ("Stop right there!", "Avast there!"),
    ("Yes, I agree.", "Aye, I be agreeing with ye."),
    ("Goodbye, see you later.", "Fair winds to ye till we meet again!"),
    ("The food is delicious.", "This grub be mighty fine!"),
    ("We are lost.", "We be lost at sea!"),
    ("Look over there!", "Look yonder, me hearties!"),
    ("Who are you?", "Who be ye?"),
    ("My friends are here.", "Me hearties be here."),
    ("Please sit down.", "Take a seat on the deck, if ye please."),
    ("It is raining again.", "It be raining again, blast it!"),
    ("I found the keys.", "I found the keys, me hearties!"),
    ("Be quiet, please.", "Hush yer mouth, if ye please."),
    ("The party starts at eight.", "The party be starting at eight, me hearties."),
    ("You are very clever.", "Ye be a clever one."),
    ("Let's eat dinner.", "Let's fill our bellies with grub!"),
    ("I need some help.", "I be needing a hand, me hearties."),
    ("That is my seat.", "That be me seat."),
    ("Do you like music?", "Be ye fond o' music?"),
    ("Our team won the game.", "Our crew won the game, me hearties!"),
    ("Where is the bathroom?", "Where be the head?"),
    ("I love this song.", "I be loving this shanty!"),
    ("Happy birthday!", "Happy birthday, ye old sea dog!"),
    ("The shop is closed.", "The shop be shut, me hearty."),
    ("What time is it?", "What be the hour?"),
]


def gen_translate(rng: random.Random, n: int) -> list[dict]:
    return [
        {"instruction": rng.choice(TRANSLATE_Q), "input": src, "output": wrap(dst)}
        for src, dst in rng.sample(TRANSLATE, n)
    ]


# ---------------------------------------------------------------------------
def norm(s: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", s.lower()).split())


def build() -> list[dict]:
    rng = random.Random(SEED)
    recs: list[dict] = []
    recs += gen_capitals(rng)
    recs += gen_arithmetic(rng, QUOTAS["arithmetic"])
    recs += gen_colours(rng, QUOTAS["colours"])
    recs += gen_animals(rng, QUOTAS["animals"])
    recs += gen_opposites(rng, QUOTAS["opposites"])
    recs += gen_plurals(rng, QUOTAS["plurals"])
    recs += gen_calendar(rng, QUOTAS["calendar"])
    recs += gen_general(rng, QUOTAS["general"])
    recs += gen_translate(rng, QUOTAS["translate"])
    rng.shuffle(recs)
    return recs


def check(recs: list[dict]) -> None:
    assert len(CAPITALS) == QUOTAS["capitals"]
    assert len(GENERAL) >= 60
    assert len(recs) == sum(QUOTAS.values()) == 300, len(recs)
    keys = set()
    for r in recs:
        out = r["output"]
        assert out.startswith(PREFIX) and out.endswith(SUFFIX), out
        assert out.count("⚓") == 1, out
        assert len(out.split()) <= MAX_WORDS, out
        assert len(out) < MAX_CHARS, out
        key = (norm(r["instruction"]), norm(r.get("input", "")))
        assert key not in keys, f"duplicate: {r}"
        keys.add(key)
    # held-out prompts must not appear (exactly or via their key words)
    seen_text = [norm(r["instruction"] + " " + r.get("input", "")) for r in recs]
    for prompt, banned in HELD_OUT:
        assert (norm(prompt), "") not in keys, f"held-out prompt in training: {prompt}"
        for word in banned:
            pat = re.compile(r"\b" + re.escape(word) + r"\b")
            hits = [t for t in seen_text if pat.search(t)]
            assert not hits, f"held-out word {word!r} leaks via {hits[:3]}"
    add_pat = re.compile(
        r"^(?:what is|what s|add|what do you get if you add|what is the sum of)"
        r" (\d+)(?: plus| and|) (\d+)$"
    )
    for t in (norm(r["instruction"]) for r in recs):
        m = add_pat.match(t)
        if m:
            assert {int(m.group(1)), int(m.group(2))} != HELD_OUT_ADD_PAIR, t


def main() -> None:
    recs = build()
    check(recs)
    with OUT_PATH.open("w", encoding="utf-8") as f:
        for r in recs:
            obj = {"instruction": r["instruction"]}
            if r.get("input"):
                obj["input"] = r["input"]
            obj["output"] = r["output"]
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
    HELD_OUT_PATH.write_text("".join(p + "\n" for p, _ in HELD_OUT), encoding="utf-8")

    lens = [len(r["output"]) for r in recs]
    words = [len(r["output"].split()) for r in recs]
    print(f"wrote {len(recs)} records to {OUT_PATH}")
    print(f"wrote {len(HELD_OUT)} held-out prompts to {HELD_OUT_PATH}")
    print(f"records with input: {sum(1 for r in recs if r.get('input'))}")
    print(
        f"output chars: min={min(lens)} median={statistics.median(lens)} "
        f"mean={statistics.mean(lens):.1f} max={max(lens)}"
    )
    print(f"output words: min={min(words)} median={statistics.median(words)} max={max(words)}")
    buckets = {}
    for n in lens:
        b = (n // 20) * 20
        buckets[b] = buckets.get(b, 0) + 1
    for b in sorted(buckets):
        print(f"  {b:3d}-{b + 19:3d} chars: {buckets[b]:3d} {'#' * (buckets[b] // 2)}")


if __name__ == "__main__":
    main()
