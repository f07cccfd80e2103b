# The input normalization each ConvNeXt weight family was trained with, as model.data_preprocessor takes it (RGB
# channels on the 0-255 scale). Add this file to a config's _base_ list and write, e.g. for CLIP weights:
#     model = dict(data_preprocessor={{_base_.clip_preprocessing}})
# Sources: timm's pretrained configs (IMAGENET_DEFAULT_MEAN/STD; OPENAI_CLIP_MEAN/STD for convnext_*.clip_*) and
# transformers' DINOv3 image processor (ImageNet's), each fraction times 255.

# The paper's ImageNet files, ConvNeXt V2 (FCMAE and fine-tuned), timm's and transformers' ImageNet files.
imagenet_preprocessing = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True)
# DINOv3's ConvNeXt (the original release, transformers' DINOv3ConvNext, timm's convnext_*.dinov3_lvd1689m).
dinov3_preprocessing = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True)
# CLIP's ConvNeXt (open_clip's image towers, timm's convnext_*.clip_*): OpenAI CLIP's mean and std.
clip_preprocessing = dict(mean=[122.7709383, 116.7460125, 104.09373615],
                          std=[68.5005327, 66.6321579, 70.32316305], bgr_to_rgb=True)
