"""Export a trained network for use outside this project: `python -m mnistlab.lab.export run=...` or
`make export RUN=...`.

Next to the run's checkpoints it writes `model.safetensors` (the network's weights, no pickle),
`model.json` (how to rebuild the network and prepare its input) and, with the `export` extras
installed, `model.onnx`. `load_exported` rebuilds a ready-to-use model from the first two with
torch and safetensors alone: no Lightning, no Hydra.
"""

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from mnistlab.lab import UserError
from mnistlab.lab.command import RUN, command

log = logging.getLogger("mnistlab.lab.export")

USAGE = """usage: python -m mnistlab.lab.export [run=FOLDER | ckpt=FILE] [which=best|last] [trust=MODULES]

Writes model.safetensors, model.json and (with `pip install -e .[export]`) model.onnx next to
the checkpoint, then checks that all three give the checkpoint's logits on 256 test images.
model.json says how to prepare the input (shape, mode, scale, mean, std) and names the classes.
trust=: as for eval (another's run builds only what belongs where it stands, unless told)."""


class Exported(nn.Module):
    """The network with its input preparation. With the data's input spec (`mean`, `std`):
    uint8 images (B, C, H, W) as the data module loads them, scaled and normalized with exactly
    the arithmetic used in training. Without (`mean` None): the input as the network takes it."""

    def __init__(self, net: nn.Module, mean=None, std=None, channels_last=False):
        super().__init__()
        # The memory layout the network was trained in: same numbers, bit for bit, on a CPU.
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self.net = net.to(memory_format=self.layout)
        self.normalized = mean is not None
        if self.normalized:
            self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std).view(-1, 1, 1), persistent=False)

    def forward(self, inputs: Tensor) -> Tensor:
        if not self.normalized:
            return self.net(inputs)
        x = inputs.to(torch.float32).div(255).sub(self.mean).div(self.std)
        return self.net(x.contiguous(memory_format=self.layout))


def load_exported(folder: str | Path, trust: str | None = None) -> Exported:
    """The exported model in eval mode, from `model.json` and `model.safetensors` in `folder`.
    Unless this checkout exported it, the class it names must be of the kind it stands for, from
    an allowed package (`trust`: as for eval, see `mnistlab.lab.trust`). A network is built with
    torch alone; a whole LightningModule (exported when its config has no `net`) with Hydra."""
    from safetensors.torch import load_file

    from mnistlab.lab.signing import signed
    from mnistlab.lab.trust import check_config, check_target, trusted

    folder = Path(folder)
    folder = folder.parent if folder.name == "model.json" else folder  # the file named instead
    path = folder / "model.json"
    try:
        spec = json.loads(path.read_text())
        network, prep = spec["network"], spec["input"]
        name, arguments = network["class"], network["arguments"]
        mean, std = prep.get("mean"), prep.get("std")
        if not (isinstance(name, str) and isinstance(arguments, dict)):
            raise TypeError("network: {class: a name, arguments: a mapping}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(
            f"{path}: not an export of this template ({type(e).__name__}: {e})"
        ) from None
    allowed = None if signed(network, spec.get("origin")) else trusted(trust)
    if network.get("kind") == "module":  # the LightningModule itself, with its nested nodes
        from hydra.utils import instantiate

        node = {"_target_": name, **arguments}
        if allowed is not None:
            try:
                check_config({"model": node}, allowed)
            except UserError as e:
                raise UserError(f"{path}: {e}") from None
        net = instantiate(node)
    else:
        if allowed is None:
            module, _, attr = name.rpartition(".")
            build = getattr(importlib.import_module(module), attr)
        else:  # the class itself, found without calling anything, and of the kind a network is
            build = check_target(name, f"{path}: network.class", "an nn.Module", allowed)
        net = build(**arguments)
    net.load_state_dict(load_file(folder / "model.safetensors"))
    return Exported(net, mean, std, prep.get("channels_last", False)).eval()


# How a new picture becomes an input, as model.json says it (the data module's `prepare`).
PREPARE = {
    "mnist": "as MNIST made its digits (mnistlab.data.digit_image.as_mnist): ink = distance from the"
    " border's median colour, cropped to the ink, fitted into 20x20 keeping the aspect ratio,"
    " centre of mass at (14, 14) of 28x28, light on black",
    "fit": "the whole picture fitted into the field keeping the aspect ratio, padded with black;"
    " inverted when its median is above mid-grey",
}


def network_of(cfg, model) -> tuple[nn.Module, dict, str]:
    """What is exported, its config and its kind: the module's `net` when the config builds one
    from plain arguments (a network that loads with torch alone), else the LightningModule."""
    from mnistlab.lab.config import to_plain

    node = to_plain(cfg.model)
    net = node.get("net")
    plain = isinstance(net, dict) and not any(isinstance(v, dict) for v in net.values())
    if plain and "_target_" in net and isinstance(getattr(model, "net", None), nn.Module):
        return model.net, net, "net"
    return model, node, "module"


def export(
    cfg,
    model,
    path: Path,
    example: Tensor,
    spec=None,
    prepare: str | None = None,
    classifier: bool = True,
) -> tuple[dict[str, Path], Exported]:
    """Write `model`'s network (its weights from checkpoint `path`) beside `path`, for inputs
    like `example` (a batch as the data module loads it); with the data's input spec (an
    InputSpec), uint8 images made from new pictures by `prepare` (the data module's, if it
    says), and its classes when `classifier`. Return the files by kind, and the model read back
    from them."""
    from safetensors.torch import save

    from mnistlab.lab.files import write_whole
    from mnistlab.lab.signing import signature

    network, node, kind = network_of(cfg, model)
    weights = {k: v.contiguous() for k, v in network.state_dict().items()}
    folder = path.parent
    files = {"safetensors": folder / "model.safetensors", "json": folder / "model.json"}
    write_whole(files["safetensors"], save(weights, metadata={"checkpoint": path.name}))
    node = dict(node)
    described = {"network": {"class": node.pop("_target_"), "arguments": node, "kind": kind},
                 "input": {"shape": list(example.shape[1:]), "dtype": str(example.dtype)[6:]}}  # fmt: skip
    if spec is not None:
        described["input"] |= {
            "layout": "NCHW", "mode": "L" if spec.channels == 1 else "RGB", "scale": "1/255",
            "mean": list(spec.mean), "std": list(spec.std),
            "channels_last": bool(cfg.model.get("channels_last", False)),
            **({"prepare": PREPARE[prepare]} if prepare in PREPARE else {})}  # fmt: skip
        if classifier:  # a regressor's or an autoencoder's data may have classes too
            described["classes"] = list(spec.classes)
    if isinstance(getattr(model, "temperature", None), Tensor):
        # Calibrated probabilities: softmax(logits / temperature), the temperature fitted on the
        # validation split (mnistlab.classify.calibration).
        described["temperature"] = float(model.temperature)
    described["checkpoint"] = {"file": path.name,
                               "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}  # fmt: skip
    described["origin"] = signature(described["network"]) or ""  # load_exported here trusts it
    write_whole(files["json"], (json.dumps(described, indent=2) + "\n").encode())
    exported = load_exported(folder, trust="all")  # written just now from a checked config
    if _onnx_available():
        files["onnx"] = folder / "model.onnx"
        _to_onnx(exported, files["onnx"], example[:2])
    else:
        log.warning("onnx/onnxruntime not installed: no model.onnx (pip install -e '.[export]')")
    return files, exported


def _onnx_available() -> bool:
    return all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))


def _to_onnx(model: nn.Module, path: Path, example: Tensor) -> None:
    batch = torch.export.Dim("batch", min=1)
    for name in ("onnxscript", "onnx_ir"):  # their optimizer's passes, a dozen INFO lines a model
        logging.getLogger(name).setLevel(logging.WARNING)
    program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=({0: batch},),
                                input_names=["inputs"], output_names=["outputs"], verbose=False)  # fmt: skip
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:  # written whole, then renamed into place: a failed export leaves the old model.onnx
        program.save(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def onnx_logits(path: Path, images: Tensor) -> Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"inputs": images.numpy()})
    return torch.from_numpy(logits)


def parity(
    model, exported, files: dict[str, Path], inputs: Tensor, prepared: Tensor
) -> dict[str, float]:
    """Max |output difference| from the checkpoint's model (given `prepared`, the data module's
    batch of `inputs`), per exported form. UserError if a classifier's export predicts another
    class for any input, or another model's output is not the same to 1e-4."""

    with torch.inference_mode():
        reference = model(prepared)
        outputs = {"safetensors": exported(inputs)}
    if "onnx" in files:
        outputs["onnx"] = onnx_logits(files["onnx"], inputs)
    for kind, values in outputs.items():
        if values.shape != reference.shape:
            raise UserError(f"the {kind} export gives outputs of shape {tuple(values.shape)},"
                            f" the checkpoint {tuple(reference.shape)}")  # fmt: skip
        classes = reference.ndim == 2
        if classes and not torch.equal(values.argmax(1), reference.argmax(1)):
            raise UserError(f"the {kind} export predicts other classes than the checkpoint")
        if not classes and not torch.allclose(values, reference, rtol=1e-3, atol=1e-4):
            raise UserError(f"the {kind} export's outputs differ from the checkpoint's")
    return {k: float((v - reference).abs().max()) for k, v in outputs.items()}


def test_batch(datamodule, n: int = 256) -> tuple[Tensor, Tensor]:
    """Up to `n` test inputs as the data module's loader gives them, and as its model takes
    them (after its `on_after_batch_transfer`: an ImageDataModule normalizes there)."""
    inputs, batches = [], iter(datamodule.test_dataloader())
    while sum(len(x) for x in inputs) < n:
        batch = next(batches, None)
        if batch is None:
            break
        inputs.append(batch[0] if isinstance(batch, list | tuple) else batch)
    if not inputs:
        raise UserError(
            "the data module's test loader gives no batch: nothing to check the export on"
        )
    x = torch.cat(inputs)[:n]
    prepared = datamodule.on_after_batch_transfer((x.clone(), None), 0)
    return x, prepared[0] if isinstance(prepared, list | tuple) else prepared


def _main(args: dict, overrides: list[str]) -> int:
    from mnistlab.lab.config import build
    from mnistlab.lab.rebuild import build_model, restore

    _, path, checkpoint, cfg = restore(args, overrides, "export")
    try:
        datamodule = build(cfg, "data")
        datamodule.prepare_data()
        datamodule.setup("test")
        model = build_model(cfg, checkpoint, path)
        inputs, prepared = test_batch(datamodule)
        spec = getattr(datamodule, "spec", None)  # an image data module's input spec
        prepare = getattr(datamodule, "prepare", None)
        with torch.inference_mode():  # a score per class of the data, or another output
            classifier = spec is not None and model(prepared[:1]).shape == (1, len(spec.classes))
        files, exported = export(cfg, model, path, inputs, spec, prepare, classifier)
        gaps = parity(model, exported, files, inputs, prepared)
    except UserError as e:
        e.code = 1  # the command line was right: the run or its data is at fault
        raise
    for kind, file in files.items():
        print(f"{kind:12s} {file}")
    print(f"parity on {len(inputs)} test inputs, max |output difference| vs the checkpoint: "
          + ", ".join(f"{k} {v:.2e}" for k, v in gaps.items()))  # fmt: skip
    return 0


main = command("mnistlab-export", USAGE, **RUN)(_main)


if __name__ == "__main__":
    sys.exit(main())
