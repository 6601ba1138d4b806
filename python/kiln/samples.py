"""Real text used by parity checks, the demo and tests (written for kiln)."""

SENTENCES = [
    "The new library made deploying our models to the edge surprisingly painless.",
    "I waited forty minutes for a cold coffee and a stale croissant.",
    "A small kiln fires clay at over a thousand degrees Celsius.",
    "Marie Curie was born in Warsaw and later worked in Paris.",
    "The quarterly report shows revenue growing by twelve percent.",
    "Heavy rain is expected across the north of England tomorrow morning.",
    "She played the cello at the Royal Albert Hall in London.",
    "Can you recommend a good book about the history of mathematics?",
]

ENTITY_SENTENCES = [
    "Angela Merkel met Emmanuel Macron in Berlin on Tuesday.",
    "Apple opened a new office in Munich, according to Reuters.",
    "Ada Lovelace worked with Charles Babbage on the Analytical Engine.",
    "The United Nations held its summit in New York City.",
]

QA_PAIRS = [
    (
        "Where was Marie Curie born?",
        "Marie Curie was born in Warsaw in 1867. She moved to Paris to study physics and "
        "mathematics at the Sorbonne, where she later became the first woman to teach.",
    ),
    (
        "What temperature does a kiln reach?",
        "A kiln is a thermally insulated chamber used to harden clay. Modern electric kilns "
        "reach about 1300 degrees Celsius when firing stoneware.",
    ),
    (
        "Who wrote the first computer program?",
        "Ada Lovelace published the first algorithm intended for a machine in 1843, in her "
        "notes on Charles Babbage's Analytical Engine.",
    ),
]

SEARCH_QUERY = "How do I get my machine learning model running on a small device?"
SEARCH_DOCUMENTS = [
    "Exporting a neural network to ONNX lets it run on embedded hardware.",
    "The best sourdough needs a long, cold fermentation in the fridge.",
    "Quantising weights to eight bits shrinks a model for phones and microcontrollers.",
    "The football match ended in a goalless draw after extra time.",
    "TensorRT compiles trained networks into fast engines for NVIDIA GPUs.",
    "Tomatoes grow best with plenty of sun and regular watering.",
]

# Real photographs shipped with scikit-image (skimage.data), for image parity and tests
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photos(names=PHOTOS) -> list:
    """The named skimage.data photographs as HxWx3 uint8 arrays (scikit-image is a test extra)."""
    try:
        import skimage.data
    except ImportError:
        from .errors import InvalidArgumentError

        raise InvalidArgumentError(
            "the real photos for image parity come from scikit-image; "
            "pip install scikit-image (it is in kiln's [test] extra)"
        ) from None
    return [getattr(skimage.data, name)() for name in names]


# --- speech (Wav2Vec2 parity and demos) ---------------------------------------------------------
# Real speech synthesised by espeak-ng (Debian package; `make setup` installs it) at its native
# 22050 Hz, so every use also exercises resampling to the model's 16 kHz.
SPEECH = [
    "A small kiln fires clay at over a thousand degrees.",
    "Heavy rain is expected across the north tomorrow.",
    "She played the cello in London.",
    "Turn left at the next corner.",
]


def speech_files(texts=SPEECH) -> list:
    """WAV files of `texts` spoken by espeak-ng, generated once into $KILN_CACHE/samples/speech."""
    import hashlib
    import os
    import shutil
    import subprocess

    from .errors import InputValueError
    from .paths import cache_dir

    espeak = shutil.which("espeak-ng")
    out_dir = cache_dir() / "samples" / "speech"
    files = []
    for text in texts:
        path = out_dir / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.wav"
        if not path.is_file():
            if espeak is None:
                raise InputValueError(
                    "espeak-ng is not installed: it synthesises the speech samples "
                    "(apt-get install espeak-ng, or `make setup`)"
                )
            out_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            subprocess.run([espeak, "-w", str(tmp), text], check=True, capture_output=True)
            os.replace(tmp, path)  # concurrent sessions never see a half-written file
        files.append(path)
    return files


# Prompts for text generation (GPT-2) and sources for BART's summarisation and translation
PROMPTS = [
    "The kiln had been cooling all night, and when the potter opened its door",
    "Deploying a language model to a small device means",
    "In the spring of 1887, the village council met to decide",
]

ARTICLE = (
    "The town of Ashford opened its first public pottery studio on Saturday, after three years "
    "of fundraising by a group of local artists and retired teachers. The studio, housed in a "
    "former railway warehouse near the river, has twelve wheels, two electric kilns and a gas "
    "kiln that can reach 1300 degrees Celsius, hot enough for stoneware and porcelain. "
    "Membership costs less than a gym, and the first two months are free for students. "
    "Organisers said more than four hundred people visited on the opening day, many of them "
    "children who had never touched wet clay before. The council contributed the building on a "
    "twenty-year lease; the rest of the money came from a crowdfunding campaign, a bakery that "
    "donated a share of its weekend sales, and an auction of bowls and vases made by the "
    "founders. The studio plans evening classes for beginners, a weekly session for people "
    "living with dementia, and a summer programme with the secondary school. Its first "
    "exhibition, of tableware glazed with ash from local orchards, opens next month."
)

TRANSLATION_SOURCES = [
    "The museum opens at nine in the morning and closes at six in the evening.",
    "Please keep the kiln door closed while it is cooling.",
]

# Sentence pairs for measuring what quantisation does to similarity rankings (int8 vs fp32
# embeddings: cosine per sentence, Spearman over the pairs' similarities). Written for kiln;
# they range from paraphrases through related topics to unrelated statements, so the
# similarities spread over the whole scale and a ranking change is visible.
SENTENCE_PAIRS = [
    ("The train to Edinburgh was delayed by half an hour.", "Our train to Edinburgh arrived thirty minutes late."),
    ("She forgot her umbrella and got soaked on the way home.", "Without an umbrella, she was drenched walking back."),
    ("The museum opens at nine on weekdays.", "On weekdays the museum's doors open at 9 a.m."),
    ("He fixed the leaking tap in the kitchen.", "The kitchen faucet stopped dripping after he repaired it."),
    ("Prices of fresh vegetables rose sharply this winter.", "Vegetables became much more expensive over the winter."),
    ("The children built a snowman in the garden.", "In the garden, the kids made a snowman."),
    ("Please send me the invoice by Friday.", "Could you email the bill before the end of the week?"),
    ("The company hired two hundred new engineers.", "Two hundred engineers joined the firm this year."),
    ("My laptop battery drains very quickly.", "The battery on my notebook runs out fast."),
    ("The concert was cancelled because of the storm.", "A storm forced the organisers to call off the concert."),
    ("Bees are essential for pollinating many crops.", "Many crops depend on bees for pollination."),
    ("The recipe calls for two eggs and a cup of flour.", "You need a cup of flour and two eggs for this recipe."),
    ("He runs five kilometres every morning before work.", "Each morning he goes for a 5 km run before his job."),
    ("The bridge was closed for repairs all summer.", "Repair work kept the bridge shut throughout the summer."),
    ("The patient was discharged from hospital yesterday.", "Yesterday the hospital sent the patient home."),
    ("Our flight to Madrid leaves at dawn.", "We fly to Madrid early in the morning."),
    ("The library lends e-books as well as printed ones.", "You can borrow digital books from the library too."),
    ("The cat sleeps on the windowsill in the afternoon.", "In the afternoons the cat naps by the window."),
    ("Interest rates were raised by a quarter of a point.", "The central bank increased rates by 0.25 percent."),
    ("The volcano erupted, covering the town in ash.", "Ash from the eruption blanketed the nearby town."),
    ("She is learning to play the violin.", "She takes violin lessons every week."),
    ("The river flooded the fields after days of rain.", "Heavy rain made the river burst its banks."),
    ("The software update fixed a security flaw.", "A patch closed a vulnerability in the program."),
    ("He planted tomatoes and beans in his allotment.", "His vegetable plot has beans and tomatoes this year."),
    ("The referee showed the defender a red card.", "The defender was sent off by the referee."),
    ("The bakery sells fresh bread every morning.", "The stock market fell sharply on Monday."),
    ("My grandmother knits scarves for the whole family.", "The spacecraft entered orbit around Mars."),
    ("The printer on the third floor is out of paper.", "Penguins live mostly in the Southern Hemisphere."),
    ("We painted the living room a pale shade of green.", "The election results will be announced tonight."),
    ("The orchestra rehearsed the symphony all afternoon.", "Wheat harvests were poor in the dry summer."),
    ("Dolphins communicate using clicks and whistles.", "The tax deadline is at the end of January."),
    ("The hotel room had a view of the harbour.", "Quantum computers use qubits instead of bits."),
    ("He lost his keys somewhere in the park.", "The novel was translated into thirty languages."),
    ("The new stadium holds sixty thousand spectators.", "Fresh basil makes the pasta sauce taste better."),
    ("The glacier has retreated a kilometre in fifty years.", "She bought a second-hand bicycle for her commute."),
    ("The professor explained the theory of evolution.", "The lecture covered how species change over time."),
    ("A dog barked all night next door.", "The neighbour's puppy kept us awake."),
    ("The city plans to build more cycle lanes.", "Cyclists will get new dedicated routes in town."),
    ("The restaurant was fully booked on Saturday.", "There were no free tables at the restaurant that weekend."),
    ("The startup raised ten million dollars in funding.", "Investors put money into the young company."),
    ("The museum acquired a painting by Rembrandt.", "A Dutch master's painting is now in the museum's collection."),
    ("The storm knocked out power across the region.", "Thousands of homes lost electricity in the storm."),
    ("He studies marine biology at university.", "The ocean covers most of the Earth's surface."),
    ("The tennis final lasted nearly five hours.", "Football is the most popular sport in Brazil."),
    ("The chef prepared a vegetarian tasting menu.", "Many restaurants now offer meat-free dishes."),
    ("The teacher handed back the marked exams.", "Students receive their grades at the end of term."),
    ("Solar panels were installed on the school roof.", "Renewable energy is growing quickly worldwide."),
    ("The mountain path was steep and rocky.", "Hiking boots protect your ankles on rough trails."),
    ("She reads the newspaper on the bus to work.", "Public transport in the city is cheap and reliable."),
    ("The airline lost my suitcase on the way to Rome.", "My luggage never arrived in Rome."),
    ("The farmer sold his apples at the market.", "Apples were on sale at the farmers' market."),
    ("A new vaccine was approved for children.", "Regulators cleared the vaccine for use in kids."),
    ("The castle dates back to the twelfth century.", "The fortress was built more than eight hundred years ago."),
    ("The phone screen cracked when it fell.", "He dropped his mobile and broke the display."),
    ("The documentary follows whales on their migration.", "My cousin is getting married in June."),
    ("The garden needs watering every evening in July.", "Interest in chess grew after the television series."),
    ("The factory will close at the end of the year.", "Workers learned the plant is shutting down in December."),
    ("Coffee prices have doubled since last spring.", "The cost of coffee is twice what it was a year ago."),
    ("The author signed copies of her new novel.", "Fans queued for a signed copy of the book."),
    ("The ferry crossing was rough because of the wind.", "Strong winds made the boat trip unpleasant."),
]
