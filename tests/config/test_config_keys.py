"""Every key of DeePMD-kit 3.2's input schema for a DPA3 energy model is implemented, refused by
name, or without effect exactly as in ``dp --pt`` (issue 18, point 1).

The key list is DeePMD-kit's own (tests/data/config_keys/deepmd_keys.json, written by
tests/config/generate_keys.py); the status of each key is stated in tests/config/key_status.py
and checked here against the parser.  A key accepted without effect fails
``test_every_key_is_accounted_for`` unless DeePMD-kit's PyTorch backend ignores it too.
"""

from __future__ import annotations

import copy
import json
import re

import pytest
from key_status import (
    BASE,
    COMPANIONS,
    DOCS,
    FIXTURE,
    IMPLEMENTED,
    INERT,
    OWNED_ELSEWHERE,
    REFUSED,
    ROOT,
    docs_block,
    load_entries,
    refused_ancestor,
    status,
)

from dpa3.config._base import ConfigError
from dpa3.config.train import InputConfig

ENTRIES = load_entries()
BY_ID = {e["id"]: e for e in ENTRIES}


def set_path(d: dict, path: str, value) -> None:
    """Set ``d[a][b][c] = value`` for ``"a.b.c"`` (``None`` deletes), creating dicts."""
    *head, last = path.split(".")
    for k in head:
        d = d.setdefault(k, {})
    if value is None:
        d.pop(last, None)
    else:
        d[last] = value


def get_path(d: dict, path: str):
    for k in path.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def base_for(e: dict) -> dict:
    """The base input with the entry's variant context (``learning_rate.type`` ...)."""
    d = copy.deepcopy(BASE)
    for flag, tag in e["context"].items():
        set_path(d, flag, tag)
    return d


def probed(e: dict, value) -> dict:
    d = base_for(e)
    set_path(d, e["path"], value)
    for path, v in COMPANIONS.get(e["id"], {}).items():
        set_path(d, path, v)
    return d


def parse(d: dict) -> InputConfig:
    return InputConfig.from_dict(d)


def test_fixture_is_deepmd_3_2_schema():
    doc = json.loads(FIXTURE.read_text())
    assert doc["deepmd_version"] == "3.2.0"
    paths = {e["path"] for e in ENTRIES}
    for p in ("model.descriptor.repflow.e_sel", "loss.relative_f", "training.tensorboard"):
        assert p in paths


def test_every_key_is_accounted_for():
    """No key of the schema without a status; no stale status for a key the schema lacks."""
    missing = [e["id"] for e in ENTRIES if status(e)[0] == "UNACCOUNTED"]
    assert missing == []
    stated = set(IMPLEMENTED) | set(REFUSED) | set(INERT) | set(OWNED_ELSEWHERE)
    assert sorted(stated - set(BY_ID)) == []
    for a, b in ((IMPLEMENTED, REFUSED), (IMPLEMENTED, INERT), (REFUSED, INERT)):
        assert sorted(set(a) & set(b)) == []


@pytest.mark.parametrize("kid", sorted(IMPLEMENTED))
def test_implemented_key_changes_the_typed_config(kid):
    """Parsing the probe value gives a typed config different from the default one (the key
    is read and reaches the configuration); a variant's default choice parses unchanged."""
    e = BY_ID[kid]
    probe = IMPLEMENTED[kid][0]
    base_input = base_for(e)
    base = parse(base_input)
    got = parse(probed(e, probe))
    if e["kind"] == "variant" and (e["default"] or get_path(base_input, e["path"]) == probe):
        assert got == base
    else:
        assert got != base


@pytest.mark.parametrize("kid", sorted(IMPLEMENTED))
def test_implemented_key_names_its_test(kid):
    """The test given for a key exists."""
    test = IMPLEMENTED[kid][1]
    if not test:
        return
    path, _, name = test.partition("::")
    text = (ROOT / path).read_text()
    if name:
        assert re.search(rf"^def {re.escape(name)}\(", text, re.M), test


def _refusal_probe(e: dict):
    """The input for a refused key: its probe, or for a key below a refused section that
    section holding the key."""
    if e["id"] in REFUSED:
        return e["path"], probed(e, REFUSED[e["id"]][0])
    anc = refused_ancestor(e["path"])
    child = e["path"][len(anc) + 1 :]
    if e["kind"] == "variant":
        value = e["value"]
    else:
        d = e.get("default")
        value = 1 if d is None or isinstance(d, dict) else d
    inner: dict = {}
    set_path(inner, child, value)
    return anc, probed(BY_ID[anc], inner)


REFUSED_IDS = sorted(e["id"] for e in ENTRIES if status(e)[0].startswith("refused"))


@pytest.mark.parametrize("kid", REFUSED_IDS)
def test_refused_key_is_named(kid):
    """Parsing the key raises ConfigError naming its path (or its refused section's) and
    saying it is not supported."""
    path, data = _refusal_probe(BY_ID[kid])
    with pytest.raises(ConfigError) as err:
        parse(data)
    msg = str(err.value)
    assert f"'{path}" in msg and "not supported" in msg, msg


@pytest.mark.parametrize("kid", sorted(INERT))
def test_inert_key_is_inert_in_deepmd_too(kid):
    """An accepted key without effect is one DeePMD-kit's PyTorch backend gives no effect."""
    e = BY_ID[kid]
    probe, evidence, reason = INERT[kid]
    parse(probed(e, probe))  # accepted
    assert reason
    if evidence == "no-pt-backend":
        assert e["backends"] is not None and "PyTorch" not in e["backends"]
    elif evidence == "pt-unread":
        assert e["pt_mentions"] is False
    elif evidence.startswith("only-with "):
        assert evidence.split(" ", 1)[1] in REFUSED
    else:
        assert evidence == "explained"


def test_owned_elsewhere_keys_have_a_status():
    """Keys implemented on another branch keep a checked status until the lead flips them."""
    for kid in OWNED_ELSEWHERE:
        assert kid in IMPLEMENTED or kid in REFUSED


def test_docs_table_is_current():
    """docs/training.md carries the table this module generates
    (``python tests/config/key_status.py`` rewrites it)."""
    assert docs_block() in DOCS.read_text()
