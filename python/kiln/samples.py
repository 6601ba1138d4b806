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
