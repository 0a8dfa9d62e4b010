"""RoI feature extraction: a dense-matmul RoIAlign for small CPU feature maps and the extractor
that selects it by name."""
from .dense_roi_align import DenseRoIAlign, dense_roi_align
from .registry_roi_extractor import RegistryRoIExtractor

__all__ = ['DenseRoIAlign', 'dense_roi_align', 'RegistryRoIExtractor']
