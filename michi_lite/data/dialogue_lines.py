"""What the user says in the dialogues, and the answers the templates give.

``data.dialogues`` draws each dialogue's user turns from here: questions
about a made-up town (``FACT_BASE``, whose facts also make a dialogue's rag
prefix), general questions, requests, small talk, greetings, and facts the
user tells the assistant to remember and later asks back
(``memory_lines``). Each line carries the answer the "templates" source
gives and what a right answer must mention, so an LLM answer can be checked
against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

USER_KINDS = ("question", "recall", "request", "small_talk", "fact", "backchannel")
BACKCHANNELS = ("Mm-hm.", "Uh-huh.", "Right.", "Yeah.", "Okay.", "I see.")
INTERJECTIONS = ("Sorry,", "Wait,", "Actually,", "Oh,")  # how an interrupting turn begins


@dataclass(frozen=True)
class UserLine:
    """Something the user may say, the answer the templates give, and what a right answer must mention."""

    kind: str  # a USER_KINDS entry
    text: str
    answer: str
    key: tuple[str, ...] = ()  # a right answer says one of these (normalised); () when any answer fits
    fact: str | None = None  # the fact-base fact the question asks about: it goes into the rag prefix


def _town_facts() -> tuple[UserLine, ...]:
    """The fact base: a made-up town's opening hours, people, places, prices and events, with their questions.

    Numbers are written in words, so every engine says them alike and the
    answers need no text normaliser.
    """
    lines = []
    for place, opens, closes in (
        ("library", "nine in the morning", "six in the evening"),
        ("bakery", "seven in the morning", "two in the afternoon"),
        ("pharmacy", "eight in the morning", "eight in the evening"),
        ("swimming pool", "six in the morning", "nine in the evening"),
        ("museum", "ten in the morning", "five in the afternoon"),
        ("post office", "half past eight in the morning", "five in the afternoon"),
        ("bike shop", "ten in the morning", "seven in the evening"),
    ):
        fact = f"The {place} opens at {opens} and closes at {closes}."
        lines += [
            UserLine("question", f"When does the {place} open?", f"The {place} opens at {opens}.", (opens,), fact),
            UserLine("question", f"What time does the {place} close?", f"The {place} closes at {closes}.", (closes,),
                     fact),
        ]
    for name, role in (
        ("Nora Quinn", "head librarian"), ("Doctor Lena Park", "town dentist"), ("Omar Haddad", "baker"),
        ("Grace Okafor", "mayor"), ("Tom Becker", "swimming coach"), ("Priya Nair", "museum guide"),
        ("Felix Moreau", "pharmacist"), ("Hana Sato", "bike mechanic"),
    ):
        fact = f"{name} is the {role}."
        lines.append(UserLine("question", f"Who is the {role}?", fact, (name.split()[-1],), fact))
    for place, where, key in (
        ("museum", "on River Road, next to the old bridge", "river road"),
        ("library", "on Maple Street, across from the park", "maple street"),
        ("bakery", "on Elm Road, beside the post office", "elm road"),
        ("swimming pool", "behind the high school", "high school"),
        ("pharmacy", "on the corner of Oak Street and Main Street", "oak street"),
        ("train station", "at the north end of Main Street", "north end"),
        ("bike shop", "on Hill Lane, near the market square", "hill lane"),
        ("town hall", "on the market square", "market square"),
    ):
        fact = f"The {place} is {where}."
        lines.append(UserLine("question", f"Where is the {place}?", fact, (key,), fact))
    for thing, price in (
        ("a swim at the pool", "four dollars"), ("a ticket to the museum", "six dollars"),
        ("a loaf of bread at the bakery", "three dollars"), ("a day pass for the bus", "five dollars"),
        ("a new library card", "two dollars"),
    ):
        fact = f"{thing[0].upper()}{thing[1:]} costs {price}."
        lines.append(UserLine("question", f"How much is {thing}?", fact, (price,), fact))
    for fact, question, key in (
        ("The book club meets on Tuesday evenings.", "When does the book club meet?", "tuesday"),
        ("The farmers market is held every Saturday morning.", "When is the farmers market?", "saturday"),
        ("The town concert is on the first Friday of the month.", "When is the town concert?", "friday"),
        ("The recycling is collected on Thursdays.", "When is the recycling collected?", "thursday"),
    ):
        lines.append(UserLine("question", question, fact, (key, key + "s"), fact))  # "on Tuesdays" is right too
    return tuple(lines)


FACT_BASE = _town_facts()

GENERAL_QUESTIONS = tuple(UserLine("question", q, a, key) for q, a, key in (
    ("What is the capital of France?", "The capital of France is Paris.", ("paris",)),
    ("How many legs does a spider have?", "A spider has eight legs.", ("eight", "8")),
    ("What color is the sky on a clear day?", "On a clear day the sky is blue.", ("blue",)),
    ("How many days are there in a week?", "There are seven days in a week.", ("seven", "7")),
    ("What do bees make?", "Bees make honey.", ("honey",)),
    ("Which planet is closest to the sun?", "Mercury is the planet closest to the sun.", ("mercury",)),
    ("What is the largest ocean on Earth?", "The Pacific is the largest ocean on Earth.", ("pacific",)),
    ("How many minutes are in an hour?", "There are sixty minutes in an hour.", ("sixty", "60")),
    ("What is frozen water called?", "Frozen water is called ice.", ("ice",)),
    ("Which animal is called the king of the jungle?", "The lion is called the king of the jungle.", ("lion",)),
))

REQUESTS = tuple(UserLine("request", q, a) for q, a in (
    ("Tell me a fun fact about the ocean.", "The ocean covers about seventy percent of the Earth."),
    ("Give me a tip for sleeping better.", "Try to go to bed at the same time every night."),
    ("Suggest a name for my new cat.", "How about Pepper? It is short and easy to call."),
    ("Tell me a short joke.", "Why did the scarecrow win a prize? He was outstanding in his field."),
    ("Help me think of a gift for my mother.", "A nice plant or a book by her favorite author would be lovely."),
    ("Give me an idea for dinner tonight.", "A simple vegetable soup with fresh bread is quick and warm."),
    ("Remind me to drink some water.", "Of course. Have a glass of water now, and another in an hour."),
    ("Tell me something interesting about bees.", "Bees tell each other where the flowers are by dancing."),
    ("Suggest an exercise I can do at my desk.", "Try rolling your shoulders slowly, ten times each way."),
    ("Give me a word that rhymes with moon.", "Spoon rhymes with moon, and so does tune."),
))

SMALL_TALK = tuple(UserLine("small_talk", q, a) for q, a in (
    ("It's a lovely day, isn't it?", "It really is. A good day for a walk in the park."),
    ("I had a long day at work.", "I'm sorry to hear that. I hope you can rest this evening."),
    ("Thanks, that was really helpful.", "You're welcome. I'm glad I could help."),
    ("I'm a bit bored this afternoon.", "Maybe try a short walk, or a new book from the library."),
    ("Do you like music?", "I like hearing about it. What kind of music do you like?"),
    ("I just got back from a trip.", "Welcome back! I hope the trip went well."),
    ("What should I call you?", "You can call me Michi. I'm your voice assistant."),
    ("It's raining again today.", "Rainy days are good for a warm drink and a book."),
    ("I finally finished my project.", "Congratulations! That must feel great."),
))

GREETINGS = tuple(UserLine("small_talk", q, a) for q, a in (
    ("Hi there, how are you today?", "I'm doing well, thanks for asking. How can I help?"),
    ("Hello, are you there?", "Yes, I'm here. What can I do for you?"),
    ("Good morning!", "Good morning! What can I help you with today?"),
    ("Hey, can you help me with something?", "Of course. What do you need?"),
))

# what the user tells the assistant to remember: (statement, question back, answer), "{}" the thing told
MEMORIES = (
    ("My sister's name is {}.", "What's my sister's name?", "Your sister's name is {}.",
     ("Ada", "Mira", "June", "Rosa", "Tess")),
    ("My brother's name is {}.", "What's my brother's name?", "Your brother's name is {}.",
     ("Leo", "Hugo", "Ivan", "Omar", "Felix")),
    ("My dog is called {}.", "What is my dog called?", "Your dog is called {}.",
     ("Biscuit", "Pepper", "Rex", "Luna", "Max")),
    ("My favorite color is {}.", "What's my favorite color?", "Your favorite color is {}.",
     ("green", "purple", "yellow", "orange", "blue")),
    ("I live in {}.", "Where do I live?", "You live in {}.", ("Denver", "Lisbon", "Oslo", "Nairobi", "Melbourne")),
    ("My birthday is in {}.", "When is my birthday?", "Your birthday is in {}.",
     ("March", "May", "July", "October", "December")),
    ("I'm allergic to {}.", "What am I allergic to?", "You're allergic to {}.",
     ("peanuts", "cats", "pollen", "shellfish", "dust")),
)
ACKNOWLEDGEMENTS = ("Got it. {}", "Thanks for telling me. {}", "Okay, I'll remember that. {}")


def memory_lines(rng: np.random.Generator) -> tuple[UserLine, UserLine]:
    """A fact the user tells (acknowledged by repeating it) and the question that asks it back."""
    statement, question, answer, fillers = MEMORIES[rng.integers(len(MEMORIES))]
    filler = fillers[rng.integers(len(fillers))]
    told = answer.format(filler)
    acknowledged = ACKNOWLEDGEMENTS[rng.integers(len(ACKNOWLEDGEMENTS))].format(told)
    return (UserLine("fact", statement.format(filler), acknowledged),
            UserLine("recall", question, told, (filler,)))
