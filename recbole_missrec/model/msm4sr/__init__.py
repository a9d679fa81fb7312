"""MSM4SR, renamed MP4SR (arXiv 2303.11879): the model, its item encoder (attention pooling + MoE adaptor),
pre-training augmentations (item drop, complementary mixup) and cross-modality contrastive loss.

The family uses the core's dataset and trainers; its stage files are ``properties/model/MSM4SR*.yaml``.
"""
from recbole_missrec.model.msm4sr.msm4sr import MSM4SR

__all__ = ["MSM4SR"]
