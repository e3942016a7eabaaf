"""What people say to an assistant: templated questions, requests and conversational turns (English).

Stage-1 text made only of statements and random word sequences teaches the adaptor words, not the shape of what
users say ("What is...", "How do I...", "Can you tell me..."); on spoken questions that cost a recognizer far more
than on the held-out statements (docs/training.md). These templates cover question words, requests and small talk
with hand-picked everyday topics, Faker names/places/jobs and frequent English words (`wordfreq`), so the content
words vary widely while the frames are the ones assistants hear.

```python
from modeling_llasm.data.assistant_text import assistant_utterances
assistant_utterances(1000, seed=0, exclude={"What is a glacier?"})   # -> ["How do I clean a kettle?", ...]
```

Deterministic given `seed` and the installed faker / wordfreq versions; texts have no digits (a transcript must be
what the TTS says). `exclude` removes exact texts (the evaluation questions are never trained on).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Collection

from .words import english_words, fill_template

ANIMALS = (
    "dog", "cat", "horse", "cow", "sheep", "goat", "pig", "rabbit", "mouse", "rat", "lion", "tiger", "bear", "wolf",
    "fox", "deer", "elephant", "giraffe", "zebra", "monkey", "gorilla", "kangaroo", "koala", "panda", "camel",
    "dolphin", "whale", "shark", "octopus", "jellyfish", "crab", "lobster", "turtle", "snake", "lizard", "crocodile",
    "frog", "toad", "owl", "eagle", "parrot", "penguin", "pigeon", "duck", "swan", "chicken", "bee", "ant",
    "butterfly", "spider", "mosquito", "snail", "worm", "bat", "hedgehog", "squirrel", "beaver", "otter", "seal",
    "hamster", "goldfish", "salmon", "peacock", "flamingo", "ostrich", "cheetah", "hippo", "rhino", "moose", "donkey",
)  # fmt: skip
FOODS = (
    "apple", "banana", "orange", "lemon", "grape", "strawberry", "cherry", "peach", "pear", "mango", "pineapple",
    "watermelon", "coconut", "avocado", "tomato", "potato", "carrot", "onion", "garlic", "cucumber", "pepper",
    "broccoli", "spinach", "lettuce", "cabbage", "pumpkin", "mushroom", "corn", "rice", "bread", "pasta", "noodles",
    "soup", "salad", "pizza", "sandwich", "burger", "cheese", "butter", "yogurt", "milk", "egg", "honey", "sugar",
    "salt", "chocolate", "cookie", "cake", "pie", "pancake", "coffee", "tea", "juice", "lemonade", "oatmeal",
    "cereal", "peanut butter", "olive oil", "vinegar", "cinnamon", "popcorn", "ice cream", "sushi", "curry", "tofu",
    "beans", "lentils", "almonds", "walnuts", "chicken soup", "fried rice", "scrambled eggs", "apple pie",
)  # fmt: skip
OBJECTS = (
    "umbrella", "bicycle", "car", "bus", "train", "airplane", "boat", "helicopter", "rocket", "computer", "laptop",
    "phone", "camera", "television", "radio", "clock", "watch", "lamp", "candle", "mirror", "window", "door", "chair",
    "table", "bed", "pillow", "blanket", "towel", "soap", "toothbrush", "comb", "scissors", "hammer", "screwdriver",
    "ladder", "rope", "key", "lock", "wallet", "backpack", "suitcase", "map", "compass", "kite", "balloon", "guitar",
    "piano", "violin", "drum", "flute", "trumpet", "book", "newspaper", "pencil", "notebook", "envelope", "stamp",
    "battery", "light bulb", "microwave", "oven", "fridge", "kettle", "toaster", "washing machine", "vacuum cleaner",
    "thermometer", "microscope", "telescope", "magnet", "printer", "keyboard", "headphones", "sunglasses", "jacket",
    "sweater", "boots", "sneakers", "gloves", "scarf", "hat", "tent", "sleeping bag", "fire extinguisher",
)  # fmt: skip
NATURE = (
    "ocean", "river", "lake", "mountain", "volcano", "desert", "forest", "jungle", "island", "beach", "waterfall",
    "cave", "valley", "glacier", "iceberg", "rainforest", "coral reef", "sky", "cloud", "rain", "snow", "hail",
    "wind", "storm", "tornado", "hurricane", "lightning", "thunder", "rainbow", "fog", "sunset", "sunrise", "moon",
    "sun", "star", "planet", "comet", "galaxy", "black hole", "earthquake", "tide", "season", "winter", "summer",
    "spring", "autumn", "soil", "rock", "sand", "diamond", "gold", "silver", "iron", "copper", "tree", "flower",
    "grass", "seed", "leaf", "root", "cactus", "rose", "sunflower", "oak tree", "bamboo",
)  # fmt: skip
CONCEPTS = (
    "gravity", "electricity", "energy", "friction", "light", "sound", "heat", "temperature", "pressure", "oxygen",
    "carbon dioxide", "water vapor", "evaporation", "photosynthesis", "digestion", "the heart", "the brain",
    "the lungs", "bones", "muscles", "blood", "a cell", "bacteria", "a virus", "vaccines", "vitamins", "protein",
    "calories", "sleep", "dreams", "memory", "emotions", "happiness", "friendship", "kindness", "honesty",
    "democracy", "history", "geography", "mathematics", "algebra", "geometry", "fractions", "percentages",
    "grammar", "poetry", "music", "art", "philosophy", "economics", "money", "inflation", "taxes", "a budget",
    "the internet", "email", "passwords", "software", "a website", "an algorithm", "a robot", "machine learning",
    "recycling", "pollution", "climate change", "solar power", "wind power", "a battery", "a magnet", "an atom",
    "a molecule", "a fossil", "dinosaurs", "the pyramids", "the ancient Romans", "the Olympic Games", "a library",
    "a museum", "a passport", "a vaccine", "a fever", "a cold", "allergies", "exercise", "yoga", "meditation",
)  # fmt: skip
ACTIVITIES = (
    "cook pasta", "bake bread", "make soup", "boil potatoes", "make coffee", "brew tea", "make a smoothie",
    "grow tomatoes", "water plants", "plant flowers", "clean the kitchen", "wash dishes", "do laundry",
    "iron a shirt", "fold clothes", "fix a flat tire", "ride a bike", "drive a car", "swim faster", "run a marathon",
    "start jogging", "lose weight", "eat healthy", "fall asleep", "wake up early", "study for an exam",
    "write an essay", "give a speech", "learn to dance", "learn to draw", "play chess", "play the piano",
    "sing better", "take better photos", "save money", "make a budget", "find a job", "write a resume",
    "prepare for an interview", "speak in public", "make friends", "be more confident", "stop procrastinating",
    "focus better", "relax after work", "travel cheaply", "pack a suitcase", "learn French", "learn Spanish",
    "learn to code", "build a website", "make a cake", "take care of a puppy", "train a dog", "feed a cat",
    "change a light bulb", "paint a room", "hang a picture", "organize my desk", "plan a party", "write a poem",
    "tell a story", "read faster", "remember names", "stay warm in winter", "keep cool in summer", "make pancakes",
)  # fmt: skip
PEOPLE = (
    "Albert Einstein", "Isaac Newton", "Marie Curie", "Charles Darwin", "Galileo", "Nikola Tesla", "Thomas Edison",
    "William Shakespeare", "Jane Austen", "Charles Dickens", "Mark Twain", "Leo Tolstoy", "Pablo Picasso",
    "Vincent van Gogh", "Claude Monet", "Mozart", "Beethoven", "Bach", "Abraham Lincoln", "George Washington",
    "Napoleon", "Julius Caesar", "Cleopatra", "Queen Victoria", "Nelson Mandela", "Mahatma Gandhi",
    "Martin Luther King", "Confucius", "Aristotle", "Plato", "Socrates", "Christopher Columbus", "Marco Polo",
    "Neil Armstrong", "the Wright brothers", "Alexander Graham Bell", "Ada Lovelace", "Alan Turing", "Amelia Earhart",
    "Florence Nightingale", "Frida Kahlo", "Michelangelo", "Homer", "Buddha", "Genghis Khan",
)  # fmt: skip
ADJECTIVES = (
    "big", "small", "hot", "cold", "fast", "slow", "old", "new", "heavy", "light", "bright", "dark", "loud", "quiet",
    "sweet", "sour", "soft", "hard", "happy", "sad", "easy", "difficult", "cheap", "expensive", "healthy", "dangerous",
    "safe", "strong", "weak", "tall", "short", "wet", "dry", "clean", "dirty", "rich", "poor", "young", "brave",
)  # fmt: skip

# {animal} {food} {thing} {nature} {concept} {activity} {person} {adj} {word} {country} {city} {job} {first}
TEMPLATES = (
    "What is a {thing}?", "What is {concept}?", "What is the {nature}?", "What are {concept}?", "What is a {animal}?",
    "What does a {job} do?", "What do {animal}s eat?", "Where do {animal}s live?", "How long do {animal}s live?",
    "How big is a {animal}?", "Can a {animal} swim?", "Why do {animal}s sleep so much?", "Is a {animal} a mammal?",
    "Why is the {nature} important?", "How does a {thing} work?", "How do you use a {thing}?",
    "Who invented the {thing}?", "Who was {person}?", "What is {person} famous for?", "When did {person} live?",
    "Where is {country}?", "What is the capital of {country}?", "What language do people speak in {country}?",
    "What is the weather like in {country}?", "What food is {country} famous for?", "How do I {activity}?",
    "How can I {activity}?", "What is the best way to {activity}?", "Can you teach me how to {activity}?",
    "Give me three tips to {activity}.", "Is it hard to {activity}?", "How long does it take to {activity}?",
    "What do I need to {activity}?", "Can you explain {concept} in simple words?", "Explain {concept} to a child.",
    "Why is {concept} important?", "How does {concept} work?", "Tell me a fun fact about {animal}s.",
    "Tell me something interesting about the {nature}.", "Tell me a story about a {adj} {animal}.",
    "Write a short poem about the {nature}.", "Write a haiku about a {animal}.", "Describe a {thing} in one sentence.",
    "Describe the {nature} in a few words.", "Is {food} good for you?", "How do you make {food}?",
    "What goes well with {food}?", "Can I eat {food} every day?", "What is in a {food}?", "Is a {food} a fruit?",
    "What is the difference between a {animal} and a {animal2}?", "Which is bigger, a {animal} or a {animal2}?",
    "What is the difference between {food} and {food2}?", "Is a {thing} heavier than a {thing2}?",
    "What is the opposite of {adj}?", "What is another word for {adj}?", "What does the word {word} mean?",
    "How do you spell {word}?", "Can you use the word {word} in a sentence?", "What rhymes with {word}?",
    "Please translate {word} into French.", "How do you say {food} in Spanish?", "Please summarize the story of {person}.",
    "Could you recommend a good book about {concept}?", "I want to learn about {concept}.",
    "I need help with {concept}.", "Can you help me {activity}?", "I would like to {activity}.",
    "My {thing} is broken, what should I do?", "What should I do if my {animal} is sick?",
    "What should I bring to the {nature}?", "Is it safe to swim in a {nature}?", "Why is the {nature} {adj}?",
    "Why are {animal}s so {adj}?", "Are {animal}s dangerous?", "Do {animal}s have good eyesight?",
    "How many legs does a {animal} have?", "What color is a {animal}?", "What sound does a {animal} make?",
    "Can you name three {category}?", "List some {category}.", "Which {category} do you like the most?",
    "Hello, {first}, how are you today?", "Hi, can you help me with something?", "Thank you, that was very helpful.",
    "Good morning, what should I do today?", "I am feeling {feeling}, what should I do?",
    "Do you know anything about {person}?", "Have you heard of {person}?", "Tell me more about {concept}.",
    "Could you tell me a joke about a {animal}?", "What is your favorite {category_one}?",
    "I am planning a trip to {city}, any advice?", "What is there to see in {country}?",
    "How far is {city} from here?", "My friend {first} wants to be a {job}, how can they start?",
    "Should I buy a {thing} or a {thing2}?", "Where can I buy a {thing}?", "How much does a {thing} cost?",
    "How do I clean a {thing}?", "How do I take care of a {animal}?", "Why does my {thing} make a strange noise?",
    "What happens if you eat too much {food}?", "Why do people like {food}?", "Is {concept} a good idea?",
)  # fmt: skip
FEELINGS = ("tired", "bored", "sad", "stressed", "nervous", "lonely", "hungry", "cold", "sleepy", "excited", "worried")
CATEGORIES = ("animals", "fruits", "vegetables", "colors", "countries", "planets", "musical instruments", "sports",
              "birds", "insects", "flowers", "trees", "jobs", "languages", "board games", "desserts", "drinks")  # fmt: skip
SINGULAR = ("animal", "fruit", "color", "sport", "season", "book", "movie", "song", "food", "game", "flower", "drink")

_ALLOWED = re.compile(r"[A-Za-z][A-Za-z ,.'?!-]*")


def _words(top_n: int = 8000) -> list[str]:
    return [w for w in english_words(top_n) if len(w) > 3]


def assistant_utterances(n: int, *, seed: int = 0, exclude: Collection[str] = ()) -> list[str]:
    """`n` distinct questions, requests and conversational turns (see the module docstring)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    import faker

    fake = faker.Faker("en_US")
    fake.seed_instance(seed)
    rng = random.Random(f"llasm-assistant-text:{seed}")
    words = _words()
    pick = lambda options: (lambda: rng.choice(options))  # noqa: E731
    slots: dict[str, Callable[[], str]] = {
        "animal": pick(ANIMALS), "animal2": pick(ANIMALS), "food": pick(FOODS), "food2": pick(FOODS),
        "thing": pick(OBJECTS), "thing2": pick(OBJECTS), "nature": pick(NATURE), "concept": pick(CONCEPTS),
        "activity": pick(ACTIVITIES), "person": pick(PEOPLE), "adj": pick(ADJECTIVES), "word": pick(words),
        "feeling": pick(FEELINGS), "category": pick(CATEGORIES), "category_one": pick(SINGULAR),
        "country": fake.country, "city": fake.city, "first": fake.first_name,
        "job": lambda: fake.job().split(",")[0].lower(),
    }  # fmt: skip
    excluded = {text.strip() for text in exclude}
    seen: set[str] = set()
    out: list[str] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"assistant_utterances: only {len(out)} distinct texts of {n} after {attempts} attempts")
        text = re.sub(r"\s+", " ", fill_template(rng.choice(TEMPLATES), slots)).strip()
        text = re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)  # "a elephant" -> "an elephant"
        text = text[0].upper() + text[1:]
        if text in seen or text in excluded or not _ALLOWED.fullmatch(text):
            continue
        seen.add(text)
        out.append(text)
    return out


__all__ = ["assistant_utterances", "TEMPLATES"]
