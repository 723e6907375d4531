"""Turn a float model into its quantisation-aware twin by swapping layers in place.

Every ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d`` becomes the Brevitas layer with quantised weights,
every ``nn.ReLU`` the quantised ReLU; everything else (BatchNorm, pooling, dropout, residual adds)
stays float, except that ``fold_batch_norm`` (fpga preset) folds a BatchNorm that reads a conv's
output into that conv (``layers.FoldedQuantConv2d``; the BatchNorm module stays, as a pass-through
holding its parameters). Module names do not change and the input quantiser is a child
``input_quant`` applied by a forward pre-hook (no wrapper), so the quantised model has the float
one's noise sites with the same indices and names: its ``nora_site_hints`` count the quantised
activations as activations and leave the input quantiser out (it belongs to the input site).
Reusing the float architectures keeps one definition of each network.
"""

from __future__ import annotations

import torch
from torch import nn

from nora.errors import NoraError
from nora.quant.config import QuantConfig
from nora.sim.sites import SiteHints

#: Child name of the input quantiser.
INPUT_QUANT = "input_quant"


def _quantise_input(module: nn.Module, args: tuple) -> tuple:
    return (getattr(module, INPUT_QUANT)(args[0]), *args[1:])


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def conv_norm_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(conv, BatchNorm) module names where the BatchNorm reads the conv's output directly, found in
    one forward pass (each module called once; pairs ``layers.can_fold`` accepts). The conv's output
    must feed nothing else, which a hook cannot see; it holds for ResNet, the builder that folds."""
    from nora.quant import layers

    outputs: dict[int, tuple[str, torch.Tensor]] = {}  # the tensors are kept, so no id is reused
    pairs: list[tuple[str, str]] = []
    calls: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if type(module) is nn.Conv2d:
            def after(_m, _args, output, name=name):
                calls[name] = calls.get(name, 0) + 1
                outputs[id(output)] = (name, output)
            handles.append(module.register_forward_hook(after))
        elif type(module) is nn.BatchNorm2d:
            def before(_m, args, name=name):
                calls[name] = calls.get(name, 0) + 1
                if id(args[0]) in outputs:
                    pairs.append((outputs[id(args[0])][0], name))
            handles.append(module.register_forward_pre_hook(before))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return [(conv, norm) for conv, norm in pairs if calls[conv] == calls[norm] == 1
            and layers.can_fold(model.get_submodule(conv), model.get_submodule(norm))]


def quantize(model: nn.Module, config: QuantConfig) -> nn.Module:
    """The QAT version of ``model`` (changed in place and returned)."""
    from nora.quant import layers

    if config.fold_batch_norm:
        shape = getattr(model, "input_shape", None)
        if shape is None:
            raise NoraError(f"{type(model).__name__}: fold_batch_norm needs the model's input_shape to find the pairs")
        for conv, norm in conv_norm_pairs(model, torch.zeros(2, *shape)):
            folded, kept = layers.folded_pair(model.get_submodule(conv), model.get_submodule(norm), config)
            _set(model, norm, kept)
            _set(model, conv, folded)

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if layers.convertible(child):
                setattr(parent, name, layers.quantised_counterpart(child, config))
            else:
                swap(child)

    swap(model)
    if config.input_bits is not None:
        model.add_module(INPUT_QUANT, layers.quant_input(config))
        model.register_forward_pre_hook(_quantise_input)
    model.nora_site_hints = SiteHints(types=(("activation", layers.ACTIVATION_TYPES),), exclude=(INPUT_QUANT,))
    model.quant_preset = config.preset
    return model
