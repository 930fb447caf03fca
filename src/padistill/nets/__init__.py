"""Networks behind a registry, and the flat parameter layout PAD's depth mask is defined on.

    model = build("convnet-3", num_classes=10, channels=3, im_size=(32, 32), seed=0)
    layout = param_layout(model)            # names, shapes, offsets, total P (spec §5.2)
    logits = layout.functional_forward(model, flat, x)   # the unrolled student (spec §3.8)

Registered nets (`list_nets()`): convnet (-bn/-ln/-nn), resnet18 (-bn), vgg11 (-bn), alexnet, lenet,
mlp (spec §5.1, paper Appendix B). Every net provides `forward` (logits), `embed` (penultimate
features), `features_by_layer` (per-stage features, shallow -> deep, logits last) and `stages`.
"""

# The family modules are imported for their @register_net side effect; this order is list_nets()'s.
# isort: off
from padistill.nets import convnet, resnet, vgg, alexnet, lenet, mlp  # noqa: F401
# isort: on
from padistill.nets.layout import ParamLayout, depth_order, param_layout
from padistill.nets.registry import build, count_params, list_nets, net_identity, parse_net_name, register_net

__all__ = [
    "ParamLayout", "build", "count_params", "depth_order", "list_nets", "net_identity", "param_layout",
    "parse_net_name", "register_net",
]
