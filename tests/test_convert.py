"""open_clip checkpoints converted to clipjax: the same embeddings as open_clip's own PyTorch models, every
misfit named, and the command line through to zero-shot evaluation with `config.init`."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import open_clip  # the test extra installs it (with PyTorch): these tests are never skipped
import pytest
import torch
from ml_collections import ConfigDict

from clipjax.convert.__main__ import main as convert_main
from clipjax.convert.openclip import convert_open_clip, open_clip_model_config, open_clip_normalize
from clipjax.convert.state_dict import ConversionError, read_state_dict
from clipjax.data.images import center_crop, decode_image
from clipjax.data.transforms import normalize_images
from clipjax.main import main
from clipjax.models import CLIP, build_clip
from clipjax.tokenizer import tokenize
from tests.shards import encode, photos

TEXTS = ["a photo of an astronaut", "a cat on a chair", "", "café crème — naïve façade!"]


def reference(name):
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None).eval()
    with torch.no_grad():  # a non-default temperature, so the scale is really converted
        model.logit_scale.fill_(2.5)
        for module in model.modules():  # BatchNorm statistics other than the defaults, so they are converted too
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model, {key: value.detach().numpy() for key, value in model.state_dict().items()}


def converted(name):
    """(open_clip model with random weights, its state dict, the clipjax config.model, converted variables)."""
    torch_model, state_dict = reference(name)
    config = open_clip_model_config(name)
    return torch_model, state_dict, config, convert_open_clip(state_dict, config)


def pixels(size, normalize="clip"):
    """Two real photos, centre-cropped to size and normalised: float32 [2, size, size, 3]."""
    images = [center_crop(np.asarray(p.convert("RGB")), size) for p in (photos()["astronaut"], photos()["chelsea"])]
    return np.asarray(normalize_images(np.stack(images), normalize))


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-32-quickgelu", "MobileCLIP2-S0", "MobileCLIP-B"])
def test_converted_open_clip_gives_open_clips_embeddings(name):
    torch_model, _, config, variables = converted(name)
    model = build_clip(config)
    images, tokens = pixels(config.image_size, open_clip_normalize(name)), tokenize(TEXTS)
    with torch.no_grad():
        want_image = torch_model.encode_image(torch.tensor(images).permute(0, 3, 1, 2), normalize=True).numpy()
        want_text = torch_model.encode_text(torch.tensor(tokens, dtype=torch.long), normalize=True).numpy()
    got_image, got_text, scale = jax.jit(model.apply)(variables, jnp.asarray(images), jnp.asarray(tokens))
    np.testing.assert_allclose(got_image, want_image, atol=1e-4)
    np.testing.assert_allclose(got_text, want_text, atol=1e-4)
    assert float(scale) == pytest.approx(float(torch_model.logit_scale.detach().exp()), rel=1e-6)


@pytest.mark.parametrize("name", ["ViT-B-16", "ViT-L-14", "MobileCLIP-S1", "MobileCLIP-S2"])
def test_larger_models_convert_to_exactly_clipjax_shapes(name):
    _, state_dict, config, variables = converted(name)
    model = build_clip(config)
    size, length = config.image_size, config.text.context_length
    expected = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), jnp.zeros((1, length), jnp.int32))
    )
    assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda s: s.shape, expected)
    weights = [v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")]
    assert sum(v.size for v in jax.tree.leaves(variables)) == sum(v.size for v in weights)


def test_misfits_are_all_named_in_one_line():
    _, state_dict = reference("ViT-B-32")
    state_dict = dict(state_dict)
    del state_dict["visual.ln_post.bias"]
    state_dict["visual.extra_head.weight"] = np.zeros(3, np.float32)
    state_dict["text_projection"] = np.zeros((512, 256), np.float32)
    with pytest.raises(ConversionError) as error:
        convert_open_clip(state_dict, open_clip_model_config("ViT-B-32"))
    message = str(error.value)
    assert "\n" not in message
    assert "unknown keys: visual.extra_head.weight" in message
    assert "missing keys: visual.ln_post.bias" in message
    assert "shape: text_projection (512, 256) vs expected (512, 512)" in message


def test_pt_and_safetensors_files_read_alike(tmp_path):
    from safetensors.numpy import save_file

    tensors = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array(np.e, np.float32)}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": torch.tensor(v) for k, v in tensors.items()}}, tmp_path / "w.pt")
    for path in ("w.safetensors", "w.pt"):
        loaded = read_state_dict(str(tmp_path / path))
        assert sorted(loaded) == ["a.weight", "b"]
        np.testing.assert_array_equal(loaded["a.weight"], tensors["a.weight"])


def test_bfloat16_and_float16_safetensors_convert_to_float32_parameters(tmp_path):
    # Released weights are often bf16: torch writes the file, torch's own cast to float32 is the oracle.
    from safetensors.torch import save_file

    _, state_dict = reference("ViT-B-32")
    stored = {
        k: torch.tensor(v).to(torch.bfloat16 if k.startswith("visual.") else torch.float16)
        for k, v in state_dict.items()
    }
    save_file(stored, str(tmp_path / "model.safetensors"))
    loaded = read_state_dict(str(tmp_path / "model.safetensors"))
    assert sorted(loaded) == sorted(stored)
    for key, value in stored.items():
        assert loaded[key].dtype == np.float32
        np.testing.assert_array_equal(loaded[key], value.float().numpy())
    assert not np.array_equal(loaded["visual.proj"], state_dict["visual.proj"])  # really rounded to bf16
    config = open_clip_model_config("ViT-B-32")
    got = convert_open_clip(loaded, config)
    want = convert_open_clip({k: v.float().numpy() for k, v in stored.items()}, config)
    assert all(a.dtype == np.float32 for a in jax.tree.leaves(got))
    jax.tree.map(np.testing.assert_array_equal, got, want)


# Slow (about 45 s on 2 cores): left out of the default run, run with `python -m pytest -q -n 2 -m slow`.
@pytest.mark.slow
def test_convert_then_evaluate_zero_shot_from_the_command_line(tmp_path, repo_root, capsys):
    from safetensors.numpy import save_file

    torch_model, state_dict = reference("ViT-B-32")
    save_file(state_dict, str(tmp_path / "model.safetensors"))
    weights = str(tmp_path / "weights")
    args = ["--source=open_clip", "--model=ViT-B-32", f"--checkpoint={tmp_path / 'model.safetensors'}"]
    assert convert_main([*args, f"--workdir={weights}"]) == 0
    assert "converted open_clip ViT-B-32 (151.3M parameters)" in capsys.readouterr().out
    assert convert_main([*args, f"--workdir={weights}"]) == 1  # never overwrites
    assert "already holds converted parameters" in capsys.readouterr().err

    # Three classes of real photos; open_clip's own model classifies the same pixels as the oracle.
    folder = tmp_path / "val"
    chosen = {"cat": ["chelsea"], "space": ["astronaut", "hubble"], "cup": ["coffee"]}
    for label, names in chosen.items():
        (folder / label).mkdir(parents=True)
        for name in names:
            (folder / label / f"{name}.png").write_bytes(encode(photos()[name], "png"))
    workdir = str(tmp_path / "eval")
    status = main(
        [
            f"--config={repo_root}/configs/evaluate.py",
            f"--config.init={weights}",
            f"--workdir={workdir}",
            "--config.eval.zeroshot.kind=folder",
            f"--config.eval.zeroshot.path={folder}",
            "--config.eval.zeroshot.classnames=source",
            "--config.eval.zeroshot.batch_size=8",
        ]
    )
    assert status == 0, capsys.readouterr().err
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        (row,) = [json.loads(line) for line in f]
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)["summary"]
    # Evaluation compiles no training step: the time to load the weights is named as such.
    assert "compile_time_s" not in summary and 0 < summary["time/load_s"] < summary["wall_time_s"]

    from clipjax.evals.setup import imagenet_prompts

    _, templates = imagenet_prompts()
    classes = sorted(chosen)
    files = [(folder / c / f"{n}.png", i) for i, c in enumerate(classes) for n in sorted(chosen[c])]
    images = np.stack([center_crop(decode_image(path.read_bytes(), target=224), 224) for path, _ in files])
    with torch.no_grad():
        image_emb = torch_model.encode_image(
            torch.tensor(np.asarray(normalize_images(images, "clip"))).permute(0, 3, 1, 2), normalize=True
        )
        prompts = tokenize([t.format(c) for c in classes for t in templates])
        text_emb = torch_model.encode_text(torch.tensor(prompts, dtype=torch.long), normalize=True)
        classifier = torch.nn.functional.normalize(text_emb.reshape(3, len(templates), -1).mean(1), dim=-1)
        predicted = (image_emb @ classifier.T).argmax(1).numpy()
    assert row["eval/zeroshot_top1"] == pytest.approx(np.mean(predicted == [label for _, label in files]))
    assert row["step"] == 0


def test_clipjax_model_accepts_converted_params_under_jit():
    # The converted tree is plain numpy: it must go through jit and the CLIP encoders unchanged.
    _, _, config, variables = converted("ViT-B-32")
    params = variables["params"]
    encode = jax.jit(lambda p, t: build_clip(config).apply({"params": p}, t, method=CLIP.encode_text))
    out = encode(params, jnp.asarray(tokenize(["a dog"])))
    assert out.shape == (1, 512) and np.isclose(float(jnp.linalg.norm(out)), 1.0, atol=1e-5)


def test_mobileclip_variables_round_trip_through_an_init_directory(tmp_path):
    from clipjax.parallel import make_mesh, state_shardings
    from clipjax.tasks.evaluate import abstract_variables
    from clipjax.weights import load_variables, read_metadata, save_converted

    _, _, model_config, variables = converted("MobileCLIP2-S0")
    save_converted(str(tmp_path / "w"), variables, model_config, normalize="none", source="test")
    metadata = read_metadata(str(tmp_path / "w"))
    assert metadata["normalize"] == "none" and metadata["model"]["name"] == "mci0"
    assert metadata["model"]["text"]["causal"] is False
    config = open_clip_model_config("MobileCLIP2-S0")
    mesh = make_mesh(ConfigDict({"data": 4, "fsdp": 2}))
    sharding_of = lambda tree: state_shardings(tree, mesh, 2**16)  # noqa: E731
    target = abstract_variables(build_clip(config), ConfigDict({"model": config}), sharding_of)
    loaded = load_variables(str(tmp_path / "w"), target)
    assert set(loaded) == {"params", "batch_stats"}
    for want, got in zip(jax.tree.leaves(variables), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(got), want)


def test_a_timm_image_tower_converts_alone_and_is_refused_for_zero_shot(tmp_path, repo_root, capsys):
    import timm
    from safetensors.numpy import save_file

    torch.manual_seed(0)
    tower = timm.create_model("fastvit_mci0", pretrained=False, num_classes=512).eval()
    save_file({k: v.detach().numpy() for k, v in tower.state_dict().items()}, str(tmp_path / "mci0.safetensors"))
    weights = str(tmp_path / "weights")
    args = ["--source=timm", "--model=fastvit_mci0", f"--checkpoint={tmp_path / 'mci0.safetensors'}"]
    assert convert_main([*args, f"--workdir={weights}"]) == 0
    assert "converted timm fastvit_mci0 (11.4M parameters)" in capsys.readouterr().out
    with open(os.path.join(weights, "clipjax_init.json")) as f:
        metadata = json.load(f)
    assert metadata["towers"] == ["image"] and metadata["model"]["name"] == "mci0"
    assert metadata["normalize"] == "none"
    evaluate = [f"--config={repo_root}/configs/evaluate.py", f"--config.init={weights}", f"--workdir={tmp_path}/e"]
    status = main([*evaluate, "--config.eval.zeroshot.kind=synthetic"])
    assert status == 2 and "holds an image tower only" in capsys.readouterr().err


def test_mobileclip_b_settings_are_checked_and_older_configs_resume_as_clip_layout():
    from clipjax.config import load_config
    from clipjax.errors import ConfigError
    from clipjax.train.loop import check_compatible
    from clipjax.validation import validate

    config = load_config("configs/demo.py", [("model.image.stem", "mci")])  # the demo's ViT has 8 px patches
    with pytest.raises(ConfigError, match="stem='mci'.*16x16 patches, got patch size 8"):
        validate(config, num_devices=8, process_count=1)
    config = load_config("configs/demo.py", [("model.image.layout", "openai")])
    with pytest.raises(ConfigError, match="config.model.image.layout"):
        validate(config, num_devices=8, process_count=1)
    # A config saved before model.image.layout existed meant CLIP's layout: resuming it is fine, a switch is not.
    saved = load_config("configs/demo.py", []).to_dict()
    del saved["model"]["image"]["layout"]
    check_compatible(saved, load_config("configs/demo.py", []), "ckpt")
    with pytest.raises(ConfigError, match="config.model.image.layout was 'clip'"):
        check_compatible(saved, load_config("configs/demo.py", [("model.image.layout", "timm")]), "ckpt")
