"""voxagent vision: the instructable native-space encoder/generator (VoxelPrompt 3.1, 3.3, A.1).

Torch level: :func:`build_vision_net` -> :class:`VisionNet` (``encode`` / ``generate``).
Serving level: ``vision.engine.VisionEngine`` (imported lazily by callers; it pulls in voxel_ops).
"""
from vision.config import PRESETS, VisionConfig, get_config
from vision.model import Encoding, StreamEncoding, VisionNet, build_vision_net

__all__ = ["PRESETS", "VisionConfig", "get_config", "Encoding", "StreamEncoding", "VisionNet", "build_vision_net"]
