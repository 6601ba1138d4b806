"""Recipes and the registry: every recipe loads, bad recipes say what is wrong, and the registry
finds the deployable a checkpoint is."""
import pytest

from kiln import registry
from kiln.errors import InvalidArgumentError
from kiln.recipe import Recipe, all_recipes, load_recipe, parse_dims

EXPECTED = {"minilm-feature-extraction", "bert-text-classification", "bert-token-classification",
            "bert-question-answering"}


def test_every_recipe_loads_and_matches_the_registry():
    names = set()
    for path in all_recipes():
        r = load_recipe(path)
        names.add(r.name)
        assert path.stem == r.name, "a recipe file is named after its deployable"
        d = r.deployable
        assert set(r.dims) == set(d.dims)
        for graph in d.graphs:
            for spec in graph.input_specs(d.config_class()):  # a default config of the family
                assert all(dim in r.dims for dim in spec.symbols)
        assert set(r.formats) == {"torchscript", "onnx", "aoti"}
        if r.random_head and d.labels:
            assert r.labels, f"{r.name}: a random head needs labels"
    assert EXPECTED <= names


def test_each_fact_is_named_once():
    """The config class and the transformers reference come from the model class."""
    for d in registry.deployables().values():
        assert d.config_class is d.model.config_class
        assert d.family == d.model.config_class.model_type
        assert d.reference_class == d.model.hf_architecture
        assert {g.name for g in d.graphs} == ({"model"} if d.kind == "engine" else set(g.name for g in d.graphs))


def test_recipe_by_name_and_unknown_name():
    assert load_recipe("bert-question-answering").task == "question-answering"
    with pytest.raises(InvalidArgumentError, match="no-such-recipe.*known recipes: .*minilm"):
        load_recipe("no-such-recipe")


def _write(tmp_path, body):
    p = tmp_path / "r.toml"
    p.write_text('name = "r"\nfamily = "bert"\ntask = "text-classification"\n'
                 'checkpoint = "x"\n' + body)
    return p


@pytest.mark.parametrize("body, message", [
    ('labels = ["a"]\nbogus = 1\n', r"unknown key\(s\) \['bogus'\]"),
    ('[dims]\nwidth = { min = 1, opt = 1, max = 2 }\n', r"'width' is not a dim .*expected one of"),
    ('[dims]\nbatch = { min = 4, opt = 2, max = 8 }\n', r"min=4 opt=2 max=8: expected 0 <= min <= opt <= max"),
    ('[dims]\nbatch = { min = 1, max = 8 }\n', r"\[dims.batch\] needs integer min, opt and max"),
    ('formats = ["torchscript", "coreml"]\n', r"unknown format\(s\) \['coreml'\]"),
    ('[task_options]\nnormalize = true\n', r"task option\(s\) \['normalize'\] are not among"),
    ('this is not toml', r"not valid TOML"),
])
def test_bad_recipes_name_the_problem(tmp_path, body, message):
    with pytest.raises(InvalidArgumentError, match=message):
        load_recipe(_write(tmp_path, body))


def test_unknown_family_task_lists_known_ones(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text('name = "r"\nfamily = "bert"\ntask = "translation"\ncheckpoint = "x"\n')
    with pytest.raises(InvalidArgumentError, match=r"no deployable bert/translation; known: .*bert/text-classification"):
        load_recipe(p)


def test_output_specs_follow_the_config():
    class C:  # the attributes output specs read
        num_labels, hidden_size, vocab_size = 3, 64, 100
    model = registry.get("bert", "token-classification").graph("model")
    assert model.output_specs(C)[0].shape == ("batch", "sequence", 3)
    assert registry.get("bert", "feature-extraction").graph("model").output_specs(C)[0].shape == ("batch", 64)
    assert [s.name for s in registry.get("bert", "question-answering").graph("model").output_specs(C)] == \
        ["start_logits", "end_logits"]


def test_the_deployable_of_a_checkpoint():
    assert registry.for_checkpoint({"model_type": "bert", "architectures": ["BertForTokenClassification"]}).task \
        == "token-classification"
    assert registry.for_checkpoint({"model_type": "bert", "architectures": ["BertModel"]}).task == "feature-extraction"
    assert registry.for_checkpoint({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}).task \
        == "text-generation"
    with pytest.raises(InvalidArgumentError, match="several tasks .*summarization, translation.*--task"):
        registry.for_checkpoint({"model_type": "bart", "architectures": ["BartForConditionalGeneration"]})
    assert registry.for_checkpoint({"model_type": "bart"}, "translation").task == "translation"
    with pytest.raises(InvalidArgumentError, match="model_type 'llama' is not a kiln family; known: .*bert"):
        registry.for_checkpoint({"model_type": "llama"})
    with pytest.raises(InvalidArgumentError, match=r"BertForPreTraining.*pass --task"):
        registry.for_checkpoint({"model_type": "bert", "architectures": ["BertForPreTraining"]})


def test_dims_from_the_command_line():
    dims = parse_dims(["sequence=2:128:384", "batch=1:1:8"])
    assert (dims["sequence"].min, dims["sequence"].opt, dims["sequence"].max) == (2, 128, 384)
    r = load_recipe("bert-text-classification").with_dims(dims)
    assert r.dims["sequence"].max == 384
    for bad in ("sequence", "sequence=1:2", "sequence=a:b:c", "=1:1:1"):
        with pytest.raises(InvalidArgumentError, match="NAME=MIN:OPT:MAX"):
            parse_dims([bad])
    with pytest.raises(InvalidArgumentError, match="min=8 opt=1 max=9"):
        parse_dims(["batch=8:1:9"])
    with pytest.raises(InvalidArgumentError, match=r"\['width'\]: not dims of bert/text-classification"):
        Recipe(name="r", family="bert", task="text-classification", checkpoint="x").with_dims(parse_dims(["width=1:1:1"]))
