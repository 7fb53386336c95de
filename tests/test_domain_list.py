import re

import pytest

from hyperdomain.guidance.domain_lists import (
    BUILTIN_LISTS,
    DomainPrompt,
    builtin_domain_list,
    parse_domain_list,
    read_domain_list,
)
from hyperdomain.errors import HyperdomainError


def _error(text: str, **kwargs) -> str:
    with pytest.raises(HyperdomainError) as info:
        parse_domain_list(text, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_sources_defaults_comments_and_blank_lines():
    text = (
        "# a header comment\n"
        "\n"
        "Anime painting\n"
        "   Marble statue - Photo of a person   \n"
        "Spider-Man   # trailing comment\n"
        "\t\n"
        "Ukiyo-e woodblock print - Photo  # hyphens inside words are not separators\n"
        "    # indented comment\n"
        "C# programmer\n"
    )
    prompts = parse_domain_list(text, default_source="Face photo")
    assert prompts == [
        DomainPrompt("Anime painting", "Face photo", 3),
        DomainPrompt("Marble statue", "Photo of a person", 4),
        DomainPrompt("Spider-Man", "Face photo", 5),
        DomainPrompt("Ukiyo-e woodblock print", "Photo", 7),
        DomainPrompt("C# programmer", "Face photo", 9),
    ]


def test_default_source_is_photo_and_prompts_are_frozen():
    (p,) = parse_domain_list("Zombie")
    assert p == DomainPrompt("Zombie", "Photo", 1)
    with pytest.raises(AttributeError):
        p.target = "Elf"


def test_crlf_and_bom_files(tmp_path):
    path = tmp_path / "d.txt"
    path.write_bytes("\ufeffElf\r\n\r\nVampire - Photo\r\n".encode("utf-8"))
    assert read_domain_list(path) == [DomainPrompt("Elf", "Photo", 1), DomainPrompt("Vampire", "Photo", 3)]


@pytest.mark.parametrize("line, problem", [
    ("- Photo", "empty target"),
    ("  -  ", "empty target"),
    ("Anime painting -", "empty source"),
    ("Anime painting - # comment", "empty source"),
    ("Anime - Photo - Sketch", "more than one ' - ' separator"),
    ("Photo", "target is the same as its source"),
    ("photo  portrait - Photo Portrait", "target is the same as its source"),
    ("\x00\x00\x01\x00{}", "control characters (is this a text file?)"),
    ("Anime\x1bpainting", "control characters"),
])
def test_malformed_line_reported_with_its_line_number(line, problem):
    text = f"# header\nZombie\n\n{line}\nElf\n"
    message = _error(text, where="domains.txt")
    assert message.startswith("domains.txt: line 4: ")
    assert problem in message
    assert re.findall(r"line (\d+)", message) == ["4"]


def test_duplicates_name_both_lines_ignoring_case_and_spacing():
    text = "Zombie\nAnime painting\nElf\n\n  anime   PAINTING - Sketch\n"
    message = _error(text, where="domains.txt")
    assert message == "domains.txt: line 5: duplicate of line 2 ('Anime painting')"


def test_all_problems_in_one_message():
    text = "Zombie\n- Photo\nElf\nzombie\nA - B - C\n"
    message = _error(text, where="domains.txt")
    assert message == ("domains.txt: line 2: empty target; line 4: duplicate of line 1 ('Zombie'); "
                       "line 5: more than one ' - ' separator in 'A - B - C'")


def test_many_problems_are_capped():
    text = "\n".join(["Zombie"] * 15)
    message = _error(text, where="d.txt")
    assert message.count("duplicate of line 1") == 10
    assert message.endswith("line 11: duplicate of line 1 ('Zombie'); and 4 more")


@pytest.mark.parametrize("text", ["", "\n\n", "# only comments\n   # and more\n\n"])
def test_empty_list_refused(text):
    assert "no domains" in _error(text, where="empty.txt")


def test_empty_default_source_refused():
    assert "default source" in _error("Zombie", default_source="  ")


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope" / "domains.txt"
    with pytest.raises(HyperdomainError) as info:
        read_domain_list(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_errors_in_a_file_name_the_file(tmp_path):
    path = tmp_path / "domains.txt"
    path.write_text("Elf\n\n-\n", encoding="utf-8")
    with pytest.raises(HyperdomainError, match=re.escape(f"{path}: line 3: empty target")):
        read_domain_list(path)


def test_non_utf8_file_names_the_file_and_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Elf\nPainting in the style of Dürer\n".encode("latin-1"))
    with pytest.raises(HyperdomainError) as info:
        read_domain_list(path)
    message = str(info.value)
    assert message.startswith(f"{path}: line 2: not UTF-8") and "\n" not in message


def test_unknown_builtin_list_refused():
    with pytest.raises(HyperdomainError, match="train"):
        builtin_domain_list("validation")


# --- The shipped lists

def _key(prompt: str) -> str:
    return " ".join(prompt.split()).casefold()


@pytest.fixture(scope="module")
def shipped() -> dict[str, list[DomainPrompt]]:
    return {name: read_domain_list(builtin_domain_list(name)) for name in BUILTIN_LISTS}


def test_shipped_lists_parse_with_enough_prompts(shipped):
    assert len(shipped["train"]) >= 300
    assert len(shipped["heldout"]) >= 50
    for prompts in shipped.values():
        for p in prompts:
            assert p.source == "Photo"
            assert 0 < len(p.target) < 60 and "#" not in p.target and " - " not in p.target
    # The format's explicit source is exercised by the shipped file itself.
    assert " - Photo" in builtin_domain_list("train").read_text(encoding="utf-8")


def test_shipped_lists_are_disjoint(shipped):
    train = {_key(p.target) for p in shipped["train"]}
    heldout = {_key(p.target) for p in shipped["heldout"]}
    assert not train & heldout


def test_shipped_prompts_fit_clip_context(shipped):
    import open_clip  # a dependency; its BPE vocabulary ships with the package, no network

    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    prompts = [p.target for ps in shipped.values() for p in ps]
    for prompt in prompts:
        # The tokenizer silently truncates, so count the BPE tokens plus start and end tokens.
        n = len(tokenizer.encode(f"a photo of the {prompt}.")) + 2
        assert n <= tokenizer.context_length == 77, (prompt, n)
    tokens = tokenizer([f"a photo of the {t}." for t in prompts])
    assert tokens.shape == (len(prompts), 77)
