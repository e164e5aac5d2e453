"""The networks: `fmnist` (small, Fashion-MNIST), `svhn` (the PACT paper's 7 conv + FC) and
`resnet20` (CIFAR-10), each built at any precision `Policy`, each able to describe itself as the
checkpoint `graph` (docs/ARCHITECTURE.md) that integer_engine exports.

Inputs are float32 NCHW tensors x = pixels / 255. Every network has a native input (fmnist
28x28x1, svhn 40x40x3, resnet20 32x32x3) and takes any data set's images by one rule
(`input_padding`): the stem conv takes the images' channels, and images smaller than the native
size are zero-padded equally on every side up to it. The padding is folded into the stem conv's
own padding (a zero pixel is the code 0, so the two are the same computation), which keeps the
graph, the export and the integer engine unchanged: they see the data set's images as they are.
Larger images run at their own size where the network ends in a global pool (fmnist, resnet20).

Every conv/linear is a QConv2d/QLinear whose
weights are quantized by `policy.weight_quant`: at `first_last_bits` for the first conv and the
last linear layer, at `wbits` elsewhere. Every activation is an `ActQuant` of kind
`policy.act_quant` at `abits` (ResNet's residual stream: `shortcut_bits`).

    build_model("svhn", Policy(wbits=2, abits=2))            # -> Module with .graph(), .input_shape
    build_model(MODEL_FOR_DATASET["cifar10"], policy)         # resnet20
    build_model("resnet20", policy, in_channels=1, image_size=28)  # on Fashion-MNIST
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from tinypact import functional as F
from tinypact.nn import AvgPool2d, BatchNorm2d, Dropout, Flatten, MaxPool2d, Module, Sequential
from tinypact.quant.layers import ActQuant, InputQuant, QConv2d, QLinear
from tinypact.quant.policy import Policy
from tinypact.tensor import Tensor

MODEL_FOR_DATASET = {"sample": "fmnist", "fashion-mnist": "fmnist", "svhn": "svhn",
                     "cifar10": "resnet20"}


def input_padding(model: str, native: int, size: int, global_pool: bool) -> int:
    """Zero pixels added on every side of a `size` x `size` image for the network `model`, whose
    native input is `native` x `native` (the module docstring's rule); ValueError (one line) when
    the images cannot be brought to the network."""
    if size < 1:
        raise ValueError(f"image size must be at least 1, got {size}")
    if size >= native:
        if size > native and not global_pool:
            raise ValueError(f"the {model} network takes images of at most {native}x{native} "
                             f"pixels (its last conv must end at 1x1), got {size}x{size}")
        return 0
    if (native - size) % 2:
        raise ValueError(f"{size}x{size} images cannot be padded equally on every side to the "
                         f"{model} network's {native}x{native}")
    return (native - size) // 2


# ==================================================================================== graph
class _GraphBuilder:
    """Appends checkpoint-graph nodes; node ids are the modules' state_dict prefixes."""

    def __init__(self, input_shape: tuple[int, int, int]):
        self.nodes: list[dict] = [{"id": "input", "op": "input", "inputs": [],
                                   "shape": list(input_shape), "scale": 1.0 / 255.0}]

    @property
    def last(self) -> str:
        return self.nodes[-1]["id"]

    def node(self, node_id: str, op: str, inputs: list[str] | None = None, **fields) -> str:
        self.nodes.append({"id": node_id, "op": op,
                           "inputs": [self.last] if inputs is None else inputs, **fields})
        return node_id

    def layer(self, name: str, module: Module, inputs: list[str] | None = None) -> str:
        """The node of one layer module (Dropout: none, it is the identity at inference)."""
        if isinstance(module, QConv2d):
            return self.node(name, "conv", inputs, weight=f"{name}.weight",
                             bias=None if module.bias is None else f"{name}.bias",
                             stride=int(module.stride), padding=int(module.padding),
                             wq=dict(module.wq))
        if isinstance(module, QLinear):
            return self.node(name, "linear", inputs, weight=f"{name}.weight",
                             bias=None if module.bias is None else f"{name}.bias",
                             wq=dict(module.wq))
        if isinstance(module, BatchNorm2d):
            return self.node(name, "bn", inputs, prefix=name, eps=float(module.eps))
        if isinstance(module, ActQuant):
            return self.node(name, "act", inputs, **module.graph_fields(name))
        if isinstance(module, MaxPool2d):
            stride = module.kernel_size if module.stride is None else module.stride
            return self.node(name, "maxpool", inputs, kernel=int(module.kernel_size),
                             stride=int(stride), padding=int(module.padding))
        if isinstance(module, AvgPool2d):
            if module.kernel_size == "global":
                return self.node(name, "avgpool", inputs, kernel="global", stride=1)
            stride = module.kernel_size if module.stride is None else module.stride
            return self.node(name, "avgpool", inputs, kernel=int(module.kernel_size),
                             stride=int(stride))
        if isinstance(module, Flatten):
            return self.node(name, "flatten", inputs)
        if isinstance(module, (Dropout, InputQuant)):  # the input node says what InputQuant does
            return self.last if inputs is None else inputs[0]
        raise TypeError(f"no graph node for {type(module).__name__} ({name})")


def graph_shapes(graph: list[dict], state: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Output shape (without the batch axis) of every graph node; `state` gives weight shapes."""
    shapes: dict[str, tuple[int, ...]] = {}
    for node in graph:
        op = node["op"]
        source = shapes[node["inputs"][0]] if node["inputs"] else None
        if op == "input":
            shape = tuple(node["shape"])
        elif op == "conv":
            out_channels, _, kh, kw = state[node["weight"]].shape
            s, p = node["stride"], node["padding"]
            shape = (out_channels, (source[1] + 2 * p - kh) // s + 1,
                     (source[2] + 2 * p - kw) // s + 1)
        elif op == "linear":
            shape = (state[node["weight"]].shape[0],)
        elif op in ("bn", "act", "add"):
            shape = source
        elif op in ("maxpool", "avgpool"):
            if node["kernel"] == "global":
                shape = (source[0], 1, 1)
            else:
                k, s, p = node["kernel"], node["stride"], node.get("padding", 0)
                shape = (source[0], (source[1] + 2 * p - k) // s + 1,
                         (source[2] + 2 * p - k) // s + 1)
        elif op == "shortcut":
            s = node["stride"]
            shape = (source[0] + node["pad_channels"], source[1] // s, source[2] // s)
        elif op == "flatten":
            shape = (int(np.prod(source)),)
        else:
            raise ValueError(f"unknown graph op {op!r} in node {node['id']!r}")
        shapes[node["id"]] = shape
    return shapes


def graph_macs(graph: list[dict], state: dict[str, np.ndarray]) -> int:
    """Multiply-accumulates of one image's forward pass through the conv and linear nodes."""
    shapes = graph_shapes(graph, state)
    total = 0
    for node in graph:
        if node["op"] == "conv":
            weight = state[node["weight"]].shape
            total += int(np.prod(shapes[node["id"]])) * int(np.prod(weight[1:]))
        elif node["op"] == "linear":
            total += int(np.prod(state[node["weight"]].shape))
    return total


# ================================================================================= networks
class Network(Module):
    """A network built from a precision policy: `input_shape` (C, H, W), `graph()`, `spec()`."""

    name = ""
    native_shape: tuple[int, int, int] = (0, 0, 0)  # (C, H, W) of the paper's / our data set
    global_pool = True  # ends in a global pool: runs on images larger than native_shape too

    def __init__(self, policy: Policy, num_classes: int = 10, in_channels: int | None = None,
                 image_size: int | None = None):
        super().__init__()
        self.policy, self.num_classes = policy, num_classes
        channels, native = self.native_shape[0], self.native_shape[1]
        self.in_channels = channels if in_channels is None else int(in_channels)
        self.image_size = native if image_size is None else int(image_size)
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be at least 1, got {self.in_channels}")
        # Extra zero padding of the stem conv (input_padding): 0 on the network's own data.
        self.stem_padding = input_padding(self.name, native, self.image_size, self.global_pool)
        self.input_shape = (self.in_channels, self.image_size, self.image_size)
        self.input_quant = InputQuant()  # first child: pixels / 255 -> 8-bit codes

    def spec(self) -> dict:
        """{"name", "kwargs"}: `build_model(spec["name"], **spec["kwargs"])` rebuilds the network
        (the checkpoint meta's "model" entry)."""
        return {"name": self.name,
                "kwargs": {"policy": self.policy.to_dict(), "num_classes": self.num_classes,
                           **self.options()}}

    def options(self) -> dict:
        """Constructor options beyond policy and num_classes (for `spec`): the input's channels
        and size where they differ from the native ones, and each network's own."""
        native = {"in_channels": self.native_shape[0], "image_size": self.native_shape[1]}
        return {key: getattr(self, key) for key, value in native.items()
                if getattr(self, key) != value}

    def graph(self) -> list[dict]:
        raise NotImplementedError

    def macs(self) -> int:
        """Multiply-accumulates per image (conv and linear layers)."""
        return graph_macs(self.graph(), self.state_dict())

    def node_outputs(self, x: Tensor) -> dict[str, Tensor]:
        """Run `self(x)` and return the output of every graph node that is a module, by node id
        (e.g. "act1", "layer2.0.out_act", "fc"): what integer_engine's layers are compared with.
        Quantized outputs carry their integer codes (`Tensor.codes`)."""
        ids = {node["id"] for node in self.graph()}
        outputs: dict[str, Tensor] = {}

        def keep(name: str):
            return lambda module, inputs, output: outputs.__setitem__(name, output)

        handles = [module.register_forward_hook(keep(name))
                   for name, module in self.named_modules() if name in ids]
        try:
            self(x)
        finally:
            for handle in handles:
                handle.remove()
        return outputs

    # --- layer factories following the policy
    def _conv(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0,
              bias: bool = False, first: bool = False) -> QConv2d:
        bits = self.policy.first_last_bits if first else self.policy.wbits
        return QConv2d(in_ch, out_ch, kernel, stride, padding, bias=bias,
                       weight_quant=self.policy.weight_quant, wbits=bits)

    def _stem(self, out_ch: int, kernel: int, stride: int = 1, padding: int = 0,
              bias: bool = False) -> QConv2d:
        """The first conv: the images' channels in, its own padding plus `stem_padding`."""
        return self._conv(self.in_channels, out_ch, kernel, stride, padding + self.stem_padding,
                          bias=bias, first=True)

    def _linear(self, in_features: int, out_features: int) -> QLinear:
        return QLinear(in_features, out_features, bias=True,
                       weight_quant=self.policy.weight_quant, wbits=self.policy.first_last_bits)

    def _act(self, bits: int | None = None) -> ActQuant:
        return ActQuant(self.policy.act_quant, self.policy.abits if bits is None else bits,
                        alpha_init=self.policy.alpha_init)


class ChainNetwork(Network):
    """A network that is one chain of layers, applied in the order they were assigned; forward
    and graph() walk the same list, so they cannot disagree."""

    def _chain(self) -> Iterator[tuple[str, Module]]:
        return self.named_children()

    def forward(self, x: Tensor) -> Tensor:
        for _, layer in self._chain():
            x = layer(x)
        return x

    def graph(self) -> list[dict]:
        builder = _GraphBuilder(self.input_shape)
        for name, layer in self._chain():
            builder.layer(name, layer)
        return builder.nodes


class FashionMNISTNet(ChainNetwork):
    """Small conv net for 28x28x1 (Fashion-MNIST); with the default width w = 16, 1.9 M MACs per
    image, so an epoch of 60k images takes about a minute on 2 cores (w = 32: 7.5 M MACs):

        conv0 w 3x3 pad 1 (first_last_bits); BN; act; maxpool 2       -> 14x14xw
        conv1 2w 3x3 pad 1; BN; act; maxpool 2                         -> 7x7x2w
        conv2 4w 3x3 pad 1; BN; act; global avg pool; flatten          -> 4w
        fc 10, bias (first_last_bits)
    """

    name = "fmnist"
    native_shape = (1, 28, 28)

    def __init__(self, policy: Policy, num_classes: int = 10, width: int = 16,
                 in_channels: int | None = None, image_size: int | None = None):
        super().__init__(policy, num_classes, in_channels, image_size)
        self.width = width
        c1, c2, c3 = width, 2 * width, 4 * width
        self.conv0, self.bn0, self.act0 = self._stem(c1, 3, 1, 1), BatchNorm2d(c1), self._act()
        self.pool0 = MaxPool2d(2, 2)
        self.conv1, self.bn1, self.act1 = self._conv(c1, c2, 3, 1, 1), BatchNorm2d(c2), self._act()
        self.pool1 = MaxPool2d(2, 2)
        self.conv2, self.bn2, self.act2 = self._conv(c2, c3, 3, 1, 1), BatchNorm2d(c3), self._act()
        self.pool2 = AvgPool2d("global")
        self.flatten = Flatten()
        self.fc = self._linear(c3, num_classes)

    def options(self) -> dict:
        return {"width": self.width, **super().options()}


class SVHNNet(ChainNetwork):
    """The PACT paper's SVHN network (tensorpack's svhn-digit-dorefa), 40x40x3 input, ~42 M MACs:

        conv0 48 5x5 VALID, bias (first_last_bits); maxpool 2; act   -> 18x18x48
        conv1 64 3x3 SAME; BN; act                                   -> 18x18x64
        conv2 64 3x3 SAME; BN; maxpool 2; act                        -> 9x9x64
        conv3 128 3x3 VALID; BN; act                                 -> 7x7x128
        conv4 128 3x3 SAME; BN; act                                  -> 7x7x128
        conv5 128 3x3 VALID; BN; act                                 -> 5x5x128
        dropout 0.5
        conv6 512 5x5 VALID; BN; act                                 -> 1x1x512
        flatten; fc 10, bias (first_last_bits)
    BatchNorm eps 1e-4, momentum 0.1 (TensorFlow's 0.9). Other convs have no bias.
    """

    name = "svhn"
    native_shape = (3, 40, 40)
    global_pool = False

    def __init__(self, policy: Policy, num_classes: int = 10, in_channels: int | None = None,
                 image_size: int | None = None):
        super().__init__(policy, num_classes, in_channels, image_size)

        def bn(channels: int) -> BatchNorm2d:
            return BatchNorm2d(channels, eps=1e-4, momentum=0.1)

        self.conv0 = self._stem(48, 5, bias=True)
        self.pool0, self.act0 = MaxPool2d(2, 2), self._act()
        self.conv1, self.bn1, self.act1 = self._conv(48, 64, 3, padding=1), bn(64), self._act()
        self.conv2, self.bn2 = self._conv(64, 64, 3, padding=1), bn(64)
        self.pool2, self.act2 = MaxPool2d(2, 2), self._act()
        self.conv3, self.bn3, self.act3 = self._conv(64, 128, 3), bn(128), self._act()
        self.conv4, self.bn4, self.act4 = self._conv(128, 128, 3, padding=1), bn(128), self._act()
        self.conv5, self.bn5, self.act5 = self._conv(128, 128, 3), bn(128), self._act()
        self.dropout = Dropout(0.5)
        self.conv6, self.bn6, self.act6 = self._conv(128, 512, 5), bn(512), self._act()
        self.flatten = Flatten()
        self.fc = self._linear(512, num_classes)


class BasicBlock(Module):
    """ResNet basic block with the residual stream `h` at `shortcut_bits`:

        a   = in_act(h)                  ActQuant at abits; absent when abits == shortcut_bits
        y   = act1(bn1(conv1(a)))        conv1 3x3, stride s, pad 1; act1 at abits
        y   = bn2(conv2(y))              conv2 3x3, stride 1, pad 1
        s   = h                          or, when downsampling (s = 2, channels c -> 2c):
              shortcut(h)                avg-pool 2x2 stride 2, then zero channels appended
                                         after the c existing ones (graph op "shortcut")
        out = out_act(y + s)             ActQuant at shortcut_bits (the ReLU after the add)
    """

    def __init__(self, net: Network, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        policy = net.policy
        self.stride = stride
        self.pad_channels = out_channels - in_channels
        self.in_act = net._act(policy.abits) if policy.abits != policy.shortcut_bits else None
        self.conv1 = net._conv(in_channels, out_channels, 3, stride, 1)
        self.bn1, self.act1 = BatchNorm2d(out_channels), net._act(policy.abits)
        self.conv2, self.bn2 = net._conv(out_channels, out_channels, 3, 1, 1), BatchNorm2d(out_channels)
        self.out_act = net._act(policy.shortcut_bits)

    @property
    def downsamples(self) -> bool:
        return self.stride != 1 or self.pad_channels != 0

    def shortcut(self, h: Tensor) -> Tensor:
        if not self.downsamples:
            return h
        h = F.avg_pool2d(h, self.stride, self.stride)
        return F.pad(h, (0, 0, 0, 0, 0, self.pad_channels))

    def forward(self, h: Tensor) -> Tensor:
        a = h if self.in_act is None else self.in_act(h)
        y = self.act1(self.bn1(self.conv1(a)))
        y = self.bn2(self.conv2(y))
        return self.out_act(y + self.shortcut(h))

    def add_to_graph(self, builder: _GraphBuilder, prefix: str) -> str:
        h = builder.last
        a = h if self.in_act is None else builder.layer(f"{prefix}.in_act", self.in_act)
        builder.layer(f"{prefix}.conv1", self.conv1, [a])
        for name in ("bn1", "act1", "conv2", "bn2"):
            builder.layer(f"{prefix}.{name}", getattr(self, name))
        y = builder.last
        s = h
        if self.downsamples:
            s = builder.node(f"{prefix}.shortcut", "shortcut", [h], stride=self.stride,
                             pad_channels=self.pad_channels)
        builder.node(f"{prefix}.add", "add", [y, s])
        return builder.layer(f"{prefix}.out_act", self.out_act)


class ResNet20(Network):
    """CIFAR-10 ResNet20 (He et al.; PACT paper), 32x32x3 input, ~41 M MACs:

        conv0 16 3x3 pad 1 (first_last_bits); BN; act0 at shortcut_bits   (the residual stream)
        layer1: 3 BasicBlocks 16 -> 16                                     32x32
        layer2: 3 BasicBlocks, the first 16 -> 32 with stride 2            16x16
        layer3: 3 BasicBlocks, the first 32 -> 64 with stride 2            8x8
        global avg pool; flatten; fc 10, bias (first_last_bits)
    The fc input is the last block's out_act, pooled: the residual stream, at shortcut_bits.
    State-dict names follow torchvision: layer2.0.conv1.weight, ...
    """

    name = "resnet20"
    native_shape = (3, 32, 32)

    def __init__(self, policy: Policy, num_classes: int = 10, in_channels: int | None = None,
                 image_size: int | None = None):
        super().__init__(policy, num_classes, in_channels, image_size)
        self.conv0 = self._stem(16, 3, 1, 1)
        self.bn0, self.act0 = BatchNorm2d(16), self._act(policy.shortcut_bits)
        self.layer1 = Sequential(*[BasicBlock(self, 16, 16, 1) for _ in range(3)])
        self.layer2 = Sequential(BasicBlock(self, 16, 32, 2), BasicBlock(self, 32, 32, 1),
                                 BasicBlock(self, 32, 32, 1))
        self.layer3 = Sequential(BasicBlock(self, 32, 64, 2), BasicBlock(self, 64, 64, 1),
                                 BasicBlock(self, 64, 64, 1))
        self.pool = AvgPool2d("global")
        self.flatten = Flatten()
        self.fc = self._linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act0(self.bn0(self.conv0(self.input_quant(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))

    def graph(self) -> list[dict]:
        builder = _GraphBuilder(self.input_shape)
        for name in ("conv0", "bn0", "act0"):
            builder.layer(name, getattr(self, name))
        for stage in ("layer1", "layer2", "layer3"):
            for index, block in enumerate(getattr(self, stage)):
                block.add_to_graph(builder, f"{stage}.{index}")
        for name in ("pool", "flatten", "fc"):
            builder.layer(name, getattr(self, name))
        return builder.nodes


MODELS: dict[str, type[Network]] = {"fmnist": FashionMNISTNet, "svhn": SVHNNet,
                                    "resnet20": ResNet20}


def build_model(name: str, policy: Policy | dict | None = None, num_classes: int = 10,
                **options) -> Network:
    """The network `name` ("fmnist" | "svhn" | "resnet20") at `policy` (a Policy, its dict, or
    None for the default Policy()); `options` go to the constructor (fmnist: width)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if policy is None:
        policy = Policy()
    elif isinstance(policy, dict):
        policy = Policy.from_dict(policy)
    return MODELS[name](policy, num_classes, **options)


def randomize_statistics(model: Network, seed: int = 0, biases: bool = True) -> Network:
    """Give an untrained `model` the spread of a trained one, in place: batch-norm running
    statistics (mean ~ N(0, 0.5), variance ~ U(0.2, 2)), PACT alphas ~ U(0.5, 2) and, with
    `biases`, layer biases ~ N(0.3, 0.3). Then every activation uses all its quantization
    levels, which is what export tests and speed benchmarks of an untrained network need.
    Returns the model, in eval mode."""
    rng = np.random.default_rng(seed)
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith("running_var"):
            state[key] = rng.uniform(0.2, 2.0, value.shape).astype(np.float32)
        elif key.endswith("running_mean"):
            state[key] = rng.normal(0, 0.5, value.shape).astype(np.float32)
        elif key.endswith(".alpha"):
            state[key] = np.array(rng.uniform(0.5, 2.0), dtype=np.float32).reshape(value.shape)
        elif biases and key.endswith("bias"):
            state[key] = rng.normal(0.3, 0.3, value.shape).astype(np.float32)
    model.load_state_dict(state)
    return model.eval()
