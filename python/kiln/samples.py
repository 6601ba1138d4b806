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
    ("Where was Marie Curie born?",
     "Marie Curie was born in Warsaw in 1867. She moved to Paris to study physics and "
     "mathematics at the Sorbonne, where she later became the first woman to teach."),
    ("What temperature does a kiln reach?",
     "A kiln is a thermally insulated chamber used to harden clay. Modern electric kilns "
     "reach about 1300 degrees Celsius when firing stoneware."),
    ("Who wrote the first computer program?",
     "Ada Lovelace published the first algorithm intended for a machine in 1843, in her "
     "notes on Charles Babbage's Analytical Engine."),
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
