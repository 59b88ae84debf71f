"""A small SmolVLM backbone folder written locally, so lerobot's SmolVLA builds with no hub access.

SmolVLA's constructor reads three things from `config.vlm_model_name` (lerobot 0.6.1,
`policies/smolvla/smolvlm_with_expert.py`): `AutoConfig.from_pretrained` (the VLM architecture; with
`load_vlm_weights=False` the weights are random and come from the checkpoint afterwards),
`AutoProcessor.from_pretrained` (only `processor.tokenizer.fake_image_token_id` / `global_image_token_id`
are used) and, in its pre-processor, `AutoTokenizer.from_pretrained` for the instruction. A folder holding a
`config.json`, a fast tokenizer and a processor config answers all three, whether it names a hub model's
files or the tiny random ones `write_tiny_smolvlm` writes for tests and examples.

The processor is declared as `Idefics3Processor` (SmolVLM's parent architecture), not `SmolVLMProcessor`:
the latter refuses to build without the `num2words` package, which only its video prompts use and which
SOP does not install. The tokenizer is byte-level BPE without merges (one token per byte) plus the special
tokens SmolVLM's prompts use, built with the `tokenizers` library: no vocabulary file to download.

The folder is a handful of small JSON files; `vlm_folder_files` / `materialize_vlm_folder` carry it inside an
SOP checkpoint's manifest so a robot or the learner can rebuild the policy from the checkpoint alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

# The special tokens SmolVLM's prompts use; SmolVLA reads the first two ids from the tokenizer.
SPECIAL_TOKENS: Final = {
    "fake_image_token": "<fake_token_around_image>",
    "global_image_token": "<global-img>",
    "image_token": "<image>",
    "end_of_utterance_token": "<end_of_utterance>",
}
# Text files that make a backbone folder (no weights: SOP's checkpoint holds them).
_FOLDER_SUFFIXES: Final = (".json", ".jinja", ".txt", ".model")
# A folder larger than this is not a config folder; refuse to copy it into a manifest.
MAX_FOLDER_BYTES: Final = 32 * 1024 * 1024


def write_tiny_smolvlm(
    directory: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    vision_hidden_size: int = 32,
    image_size: int = 32,
    patch_size: int = 8,
) -> Path:
    """Write a random-architecture SmolVLM folder (config, tokenizer, processor) into `directory`.

    The defaults give a ~0.2 M parameter backbone that runs a SmolVLA chunk in milliseconds on a CPU; the
    image side expects `image_size` square frames (set SmolVLA's `resize_imgs_with_padding` to match).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Idefics3ImageProcessor, Idefics3Processor, PreTrainedTokenizerFast, SmolVLMConfig

    if hidden_size % num_attention_heads or num_attention_heads % num_key_value_heads:
        raise ValueError(
            f"hidden_size ({hidden_size}) must divide into num_attention_heads ({num_attention_heads}), "
            f"which must divide into num_key_value_heads ({num_key_value_heads})"
        )
    if image_size % (2 * patch_size):
        raise ValueError(f"image_size ({image_size}) must be a multiple of 2 * patch_size ({patch_size})")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        extra_special_tokens=dict(SPECIAL_TOKENS),
        model_max_length=512,
    )
    values: dict[str, Any] = dict(
        text_config={
            "model_type": "llama",
            "vocab_size": len(tokenizer),
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_attention_heads,
            "num_key_value_heads": num_key_value_heads,
            "head_dim": hidden_size // num_attention_heads,
            "max_position_embeddings": 512,
            "rms_norm_eps": 1e-5,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": vision_hidden_size,
            "intermediate_size": 2 * vision_hidden_size,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": patch_size,
        },
        scale_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS["image_token"]),
        pad_token_id=tokenizer.pad_token_id,
    )
    SmolVLMConfig(**values).save_pretrained(folder)
    image_processor = Idefics3ImageProcessor(
        do_resize=False,
        do_image_splitting=False,
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
    )
    tokens_per_image = (image_size // patch_size) ** 2 // 4
    Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=tokens_per_image
    ).save_pretrained(folder)
    return folder


def tiny_smolvla_config(
    backbone: str | Path,
    *,
    state_dim: int,
    action_dim: int,
    cameras: tuple[str, ...] = ("camera",),
    image_size: int = 32,
    chunk_size: int = 8,
    n_action_steps: int = 4,
    num_steps: int = 4,
) -> Any:
    """A SmolVLA config around a `write_tiny_smolvlm` folder: the architecture at test size, random weights
    (`load_vlm_weights=False`); `SmolVLAPolicy(config)` builds it offline in well under a second."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

    inputs = {"observation.state": PolicyFeature(FeatureType.STATE, (state_dim,))}
    for camera in cameras:
        inputs[f"observation.images.{camera}"] = PolicyFeature(
            FeatureType.VISUAL, (3, image_size, image_size)
        )
    return SmolVLAConfig(
        vlm_model_name=str(backbone),
        load_vlm_weights=False,
        input_features=inputs,
        output_features={"action": PolicyFeature(FeatureType.ACTION, (action_dim,))},
        chunk_size=chunk_size,
        n_action_steps=n_action_steps,
        max_state_dim=max(32, state_dim),
        max_action_dim=max(8, action_dim),
        resize_imgs_with_padding=(image_size, image_size),
        num_vlm_layers=2,
        num_steps=num_steps,
        tokenizer_max_length=16,
        device="cpu",
    )


def vlm_folder_files(directory: str | Path) -> dict[str, str]:
    """The text files of a backbone folder, name -> content (what a checkpoint carries)."""
    folder = Path(directory)
    files: dict[str, str] = {}
    total = 0
    for path in sorted(folder.iterdir()):
        if not path.is_file() or not path.name.endswith(_FOLDER_SUFFIXES):
            continue
        total += path.stat().st_size
        if total > MAX_FOLDER_BYTES:
            raise ValueError(
                f"{folder}: the backbone folder's config files exceed {MAX_FOLDER_BYTES} bytes; "
                "point vlm_model_name at a folder with only config, tokenizer and processor files"
            )
        files[path.name] = path.read_text()
    if "config.json" not in files:
        raise ValueError(f"{folder}: no config.json; not a VLM backbone folder")
    return files


def materialize_vlm_folder(files: Mapping[str, Any], cache_dir: str | Path | None = None) -> Path:
    """Write a checkpoint's backbone files into a folder named by their hash (reused when it exists)."""
    if not isinstance(files, Mapping) or "config.json" not in files:
        raise ValueError("vlm_files: expected a mapping of file name -> text holding config.json")
    digest = hashlib.sha256(json.dumps(dict(files), sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "sop-lerobot-vlm"
    folder = root / digest
    if (folder / "config.json").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{digest}-"))
    for name, text in files.items():
        if Path(name).name != name or name.startswith("."):
            raise ValueError(f"vlm_files: {name!r} is not a plain file name")
        (staging / name).write_text(str(text))
    try:
        os.replace(staging, folder)
    except OSError:  # another process materialized the same folder first
        shutil.rmtree(staging, ignore_errors=True)
        if not (folder / "config.json").is_file():
            raise
    return folder
