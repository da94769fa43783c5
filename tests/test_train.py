"""``homeward train``: split, sampler, training loop, checkpoint round trip, frozen BN, early stopping, Ray Train.

Everything runs on tiny generated identity folders with models built from config (the ``tiny`` profile's
``test_efficientnet``, a ``resnet10t``): no weights, no network, seconds on CPU.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from engine.errors import HomewardError
from engine.train import get_recipe, load_reid_checkpoint, train
from engine.train.data import PKSampler, list_identities, split_identities
from engine.train.loop import run
from engine.train.model import ReIDNet, pca_head

IDENTITIES = 12
PER_IDENTITY = 4


def _animal(ident: int, shot: int) -> Image.Image:
    """One 'photo' of identity ``ident``: its own colours and spot layout, jittered per shot."""
    rng = random.Random(ident * 1000 + shot)
    base = random.Random(ident)
    img = Image.new("RGB", (64, 64), tuple(base.randrange(40, 220) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x, y = base.randrange(0, 48), base.randrange(0, 48)
        dx, dy = rng.randrange(-3, 4), rng.randrange(-3, 4)
        draw.ellipse((x + dx, y + dy, x + dx + 14, y + dy + 14), fill=tuple(base.randrange(0, 256) for _ in range(3)))
    return img


@pytest.fixture()
def identity_dir(tmp_path: Path) -> Path:
    root = tmp_path / "ids"
    for i in range(IDENTITIES):
        folder = root / f"dog{i:02d}"
        folder.mkdir(parents=True)
        for n in range(PER_IDENTITY):
            _animal(i, n).save(folder / f"dog{i:02d}.{n}.jpg", quality=92)
    (root / "lonely").mkdir()  # one photo only: not an identity that can be evaluated
    _animal(99, 0).save(root / "lonely" / "lonely.0.jpg")
    return root


@pytest.fixture()
def tiny(settings):
    torch.set_num_threads(2)
    return settings.with_overrides({"enrich": {"profile": "tiny"}})


def _kwargs(tmp_path: Path, **over):
    kw = dict(
        out=str(tmp_path / "ck"),
        epochs=2,
        val_fraction=0.34,
        seed=0,
        max_minutes=5.0,
        batch_identities=4,
        images_per_identity=2,
    )
    kw.update(over)
    return kw


def test_split_is_identity_disjoint_and_seeded(identity_dir: Path) -> None:
    ids = list_identities(identity_dir)
    assert "lonely" not in ids and len(ids) == IDENTITIES
    a = split_identities(ids, 0.25, seed=3)
    b = split_identities(ids, 0.25, seed=3)
    c = split_identities(ids, 0.25, seed=4)
    assert set(a.train).isdisjoint(a.val)
    assert set(a.train) | set(a.val) == set(ids)
    assert len(a.val) == 3
    assert (a.train, a.val) == (b.train, b.val)
    assert set(c.val) != set(a.val)
    paths, labels, names = a.items("val")
    assert all(p.parent.name == names[lab] for p, lab in zip(paths, labels, strict=True))


def test_pk_sampler_yields_p_identities_times_k_images() -> None:
    labels = [lab for lab in range(10) for _ in range(3 if lab % 2 else 5)]
    sampler = PKSampler(labels, p=4, k=4, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == len(labels) // 16
    for batch in batches:
        assert len(batch) == 16
        ids = [labels[i] for i in batch]
        assert len(set(ids)) == 4
        assert all(ids.count(x) == 4 for x in set(ids))
    sampler.set_epoch(1)
    assert list(sampler) != batches
    again = PKSampler(labels, p=4, k=4, seed=1)
    assert list(again) == batches


@pytest.mark.parametrize("arch", ["test_efficientnet", "resnet10t"])
def test_stage_split_computes_the_backbone_features(arch: str) -> None:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    want = torch.nn.functional.normalize(model.forward_head(model.forward_features(x), pre_logits=True), dim=-1)
    for cut, cache_at in ((0, None), (2, None), (3, 1), (99, 2), (99, None)):
        net = ReIDNet(model, trainable_from=cut, cache_at=cache_at).eval()
        assert torch.allclose(net(x), want, atol=1e-5)
        assert torch.allclose(net(net.trunk(x), cached=True), want, atol=1e-5)
    # a cut past the last block leaves only the tail (EfficientNet's conv head) trainable
    trainable = [k for k, p in net.backbone.named_parameters() if p.requires_grad]
    assert all(k.startswith(("conv_head", "bn2")) for k in trainable)
    assert set(net.state_dict()) == set(f"backbone.{k}" for k in model.state_dict())


def test_pooled_features_keep_no_autograd_graph() -> None:
    # with trainable blocks a graph per batch would hold every activation of the training set (GPU OOM at 727 dogs)
    import timm

    from engine.train.loop import _pooled_features

    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    net = ReIDNet(model, trainable_from=0, cache_at=None)
    cache = net.trunk(torch.randn(6, 3, 64, 64))
    feats = _pooled_features(net, None, [Path(f"{i}.jpg") for i in range(6)], cache, "cpu", batch=4)  # type: ignore[arg-type]
    assert feats.shape == (6, net.num_features) and not feats.requires_grad


def test_pca_head_starts_as_the_centred_geometry() -> None:
    torch.manual_seed(0)
    feats = torch.randn(50, 8) @ torch.randn(8, 8) + 3.0
    head = pca_head(feats, 8)
    centred = feats - feats.mean(0)
    out = head(feats).detach()
    # a rotation of the centred features: all pairwise inner products are preserved
    assert torch.allclose(out @ out.T, centred @ centred.T, atol=1e-3)


@pytest.mark.parametrize("recipe", ["blocks3-pca-degrade", "pca-head-frozen-bn", "pca-head-512", "top-only"])
def test_training_writes_a_checkpoint_with_provenance_that_reloads(
    tiny, identity_dir: Path, tmp_path: Path, recipe: str
) -> None:
    from engine.models.timm_embedder import TimmEmbedder

    result = train(tiny, str(identity_dir), **_kwargs(tmp_path, recipe=recipe))
    ck = Path(result["checkpoint"])
    assert (ck / "model.safetensors").is_file() and (ck / "homeward.json").is_file()
    meta = json.loads((ck / "homeward.json").read_text())
    assert meta["arch"] == "test_efficientnet" and meta["image_size"] == 64 and meta["mean"] == [0.5, 0.5, 0.5]
    assert meta["recipe"]["name"] == recipe
    assert (meta["head"] is not None) == (recipe in ("pca-head-512", "blocks3-pca-degrade"))
    data = meta["data"]
    assert data["identities"] == IDENTITIES and data["images"] == IDENTITIES * PER_IDENTITY
    assert data["split_seed"] == 0 and data["fingerprint"].startswith(("manifest:", "listing:"))
    assert set(data["val_identities"]).isdisjoint(data["train_identities"])
    assert result["val_identities"] == len(data["val_identities"]) == 4
    for part in ("baseline", "finetuned"):
        assert 0.0 <= meta["metrics"][part]["eer"] <= 1.0 and 0.0 <= meta["metrics"][part]["top1"] <= 1.0
    assert [row["epoch"] for row in meta["metrics"]["history"]][:2] == [0, 1]
    assert meta["created_at"].endswith("Z")

    net, loaded_meta = load_reid_checkpoint(ck)
    assert loaded_meta["dim"] == meta["dim"]
    paths = sorted((identity_dir / data["val_identities"][0]).iterdir())
    images = [Image.open(p).convert("RGB") for p in paths]
    embedder = TimmEmbedder({"kind": "timm", "checkpoint": str(ck / "model.safetensors")}, tiny)
    with torch.no_grad():
        mine = net(embedder.preprocess(images)).numpy()
    theirs = embedder.embed(images)
    assert mine.shape == theirs.shape == (len(images), meta["dim"])
    np.testing.assert_allclose(mine, theirs, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(mine, axis=1), 1.0, atol=1e-5)

    # `homeward eval` (and enrich/search) switch to the checkpoint by configuration alone
    from engine.eval import evaluate

    # ... on exactly the held-out identities, through the checkpoint's heldout/ folder of links
    heldout = ck / "heldout"
    assert sorted(p.name for p in heldout.iterdir()) == sorted(data["val_identities"])
    assert all((heldout / n).resolve() == (identity_dir / n).resolve() for n in data["val_identities"])
    scored = evaluate(tiny.with_overrides({"enrich": {"profile": str(ck / "profile.yaml")}}), str(heldout))
    assert scored["model"] == embedder.model_id and scored["dim"] == meta["dim"]
    assert scored["n_identities"] == len(data["val_identities"]) and 0.0 <= scored["eer"] <= 1.0


def _bn_stats(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_frozen_bn_statistics_do_not_change(tiny, identity_dir: Path, tmp_path: Path, freeze_bn: bool) -> None:
    from engine.models.registry import stage_spec
    from engine.models.timm_embedder import TimmEmbedder

    before = _bn_stats(TimmEmbedder(stage_spec(tiny, "embedder"), tiny).model)
    recipe = get_recipe(
        "pca-head-frozen-bn", trainable_from=0, freeze_bn=freeze_bn, lr=1e-2, patience=5, keep_best=False
    )
    result = run(tiny, str(identity_dir), recipe, **_kwargs(tmp_path, epochs=1))
    net, _ = load_reid_checkpoint(result["checkpoint"])
    after = _bn_stats(net.backbone)
    assert before.keys() == after.keys() and before
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    if freeze_bn:
        assert changed == []
    else:  # the control: BN in train mode does move its statistics
        assert changed
    weights_before = TimmEmbedder(stage_spec(tiny, "embedder"), tiny).model.state_dict()
    trained = [
        k
        for k, v in net.backbone.state_dict().items()
        if "running_" not in k and "num_batches" not in k and not torch.equal(v, weights_before[k])
    ]
    assert trained and all(not k.startswith(("conv_stem", "bn1")) for k in trained)  # the stem stays frozen


def test_early_stopping_stops(tiny, identity_dir: Path, tmp_path: Path) -> None:
    frozen = get_recipe("pca-head-frozen-bn", lr=0.0, head_lr=0.0, proxy_lr=0.0, patience=2)
    result = run(tiny, str(identity_dir), frozen, **_kwargs(tmp_path, epochs=6))
    assert result["epochs_run"] == 2 and result["best_epoch"] == 0
    meta = json.loads((Path(result["checkpoint"]) / "homeward.json").read_text())
    assert [r["epoch"] for r in meta["metrics"]["history"]] == [0, 1, 2]


def test_baseline_recipe_reports_without_training(tiny, identity_dir: Path, tmp_path: Path) -> None:
    result = train(tiny, str(identity_dir), **_kwargs(tmp_path, recipe="baseline-frozen"))
    assert result["epochs_run"] == 0 and result["finetuned"] == result["baseline"]


def test_unknown_recipe_is_refused(tiny, identity_dir: Path) -> None:
    from engine.errors import HomewardError

    with pytest.raises(HomewardError, match="unknown recipe"):
        train(tiny, str(identity_dir), recipe="nope")


@pytest.mark.timeout(300)
def test_ray_train_path_runs(ray_local, tiny, identity_dir: Path, tmp_path: Path) -> None:
    result = train(tiny, str(identity_dir), **_kwargs(tmp_path, epochs=1, distributed=True))
    assert result["distributed"] is True and result["workers"] == 1 and result["use_gpu"] is False
    assert result["finetuned"]["eer"] == pytest.approx(result["eer"])
    assert (Path(result["checkpoint"]) / "model.safetensors").is_file()
    _net, meta = load_reid_checkpoint(result["checkpoint"])
    assert meta["training"]["world_size"] == 1


def test_frozen_activations_are_cached_at_both_cuts_and_reused(tiny, identity_dir: Path, tmp_path: Path) -> None:
    recipe = get_recipe("top-only", lr=0.0, head_lr=0.0, proxy_lr=0.0)  # cached at block 3, trains from block 5
    cache = Path(tiny.data_dir) / "cache" / "reid-trunk"
    first = run(tiny, str(identity_dir), recipe, **_kwargs(tmp_path, epochs=1))
    files = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    # (3 training views + 2 validation views) at the cache point and again advanced to the first trainable block
    assert len(files) == 2 * (len(recipe.views) + 2)
    second = run(tiny, str(identity_dir), recipe, **_kwargs(tmp_path, epochs=1, out=str(tmp_path / "ck2")))
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == files
    assert second["baseline"] == first["baseline"] and second["finetuned"] == first["finetuned"]


def test_recipe_file_may_build_on_another_recipe_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("base: top-only\nlr: 0.001\nviews: [clean]\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nhead: pca\n")
    recipe = get_recipe(str(tmp_path / "b.yaml"))
    assert (recipe.name, recipe.lr, recipe.views, recipe.head) == ("b", 0.001, ("clean",), "pca")
    assert recipe.trainable_from == get_recipe("top-only").trainable_from


def test_training_starts_from_the_train_from_profile(tiny, identity_dir: Path, tmp_path: Path) -> None:
    """A profile whose embedder is already fine-tuned (``cpu``) names the pretrained profile training starts from;
    profiles built on it do not inherit that."""
    from engine.models import profile

    start = tmp_path / "start.yaml"
    start.write_text("base: tiny\nembedder: {seed: 3}\n")
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text(f"base: tiny\ntrain_from: {start}\nembedder: {{seed: 7}}\n")
    for prof, want in ((tuned, "random-seed3"), (start, "random-seed3"), (None, "random-seed0")):
        s = tiny.with_overrides({"enrich": {"profile": str(prof)}}) if prof else tiny
        result = train(s, str(identity_dir), **_kwargs(tmp_path, recipe="baseline-frozen", out=str(tmp_path / "o")))
        meta = json.loads((Path(result["checkpoint"]) / "homeward.json").read_text())
        assert meta["training"]["base_model_id"] == f"timm:test_efficientnet:{want}"
    assert profile(tiny, "cpu")["train_from"] == profile(tiny, "cpu-fast")["train_from"] == "cpu-imagenet"
    # an ensemble is not one network to train: without train_from the error says what to do
    pair = tmp_path / "pair.yaml"
    pair.write_text("base: tiny\nembedder: {kind: ensemble, members: [{seed: 1}, {seed: 2}]}\n")
    with pytest.raises(HomewardError, match=r"'ensemble'.*train_from"):
        train(tiny.with_overrides({"enrich": {"profile": str(pair)}}), str(identity_dir), **_kwargs(tmp_path))
    assert "train_from" not in profile(tiny, "cpu-imagenet") and "train_from" not in profile(tiny, "cpu-lite0")


def test_several_sets_split_each_alone_and_validate_per_set_and_species(
    tiny, identity_dir: Path, tmp_path: Path
) -> None:
    """Two sets train together: each keeps the held-out animals it has alone, and validation reports each set and
    species (the manifest's) as a group; the kept epoch is chosen on the groups' mean."""
    import os

    from engine.train.data import split_datasets

    cats = tmp_path / "cats" / "images"
    for i in range(9):
        (cats / f"c{i}").mkdir(parents=True)
        for n in range(3):
            _animal(40 + i, n).save(cats / f"c{i}" / f"{n}.jpg", quality=92)
    (tmp_path / "cats" / "manifest.csv").write_text(
        "identity,species\n" + "".join(f"c{i},{'dog' if i == 8 else 'cat'}\n" for i in range(9))
    )
    both = os.pathsep.join([str(identity_dir), str(cats)])
    split = split_datasets(both, 0.34, seed=0)
    alone = split_identities(list_identities(identity_dir), 0.34, seed=0)
    assert {k for k in split.val if k.startswith("ids-")} == {f"ids-{k}" for k in alone.val}
    assert {split.groups[k] for k in split.train | split.val} == {"ids", "cats/cat", "cats/dog"}
    assert split.groups["cats-c0"] == "cats/cat" and split.groups["cats-c8"] == "cats/dog"

    result = train(tiny, both, **_kwargs(tmp_path, recipe="top-only", epochs=1))
    meta = json.loads((Path(result["checkpoint"]) / "homeward.json").read_text())
    groups = meta["metrics"]["finetuned"]["by_group"]
    # a group needs two animals held out to be scored: the lone dog of the cat set never is
    assert set(groups) == {"ids", "cats/cat"}
    for figures in groups.values():
        assert 0.0 <= figures["eer"] <= 1.0 and "degraded_eer" in figures
    assert meta["data"]["path"].split(os.pathsep) == [str(identity_dir.resolve()), str(cats.resolve())]


def test_training_from_a_fine_tuned_checkpoint_continues_its_head(tiny, identity_dir: Path, tmp_path: Path) -> None:
    trained = get_recipe("pca-head-512", head_lr=1e-2, keep_best=False)  # the saved head moved away from its PCA
    first = run(tiny, str(identity_dir), trained, **_kwargs(tmp_path))
    ck = Path(first["checkpoint"])
    weights = ck / "model.safetensors"
    (tmp_path / "more.yaml").write_text(f"base: tiny\nembedder: {{kind: timm, checkpoint: {weights}}}\n")
    still = get_recipe("pca-head-512", lr=0.0, head_lr=0.0, proxy_lr=0.0)
    again = run(
        tiny.with_overrides({"enrich": {"profile": str(tmp_path / "more.yaml")}}),
        str(identity_dir),
        still,
        **_kwargs(tmp_path, out=str(tmp_path / "again"), epochs=1),
    )
    before, _ = load_reid_checkpoint(ck)
    after, _ = load_reid_checkpoint(again["checkpoint"])
    # a fresh PCA head of the fine-tuned features would differ; the continued one is the checkpoint's own
    assert torch.equal(before.head.weight, after.head.weight) and torch.equal(before.head.bias, after.head.bias)
    assert again["baseline"]["eer"] == pytest.approx(first["finetuned"]["eer"], abs=1e-6)
