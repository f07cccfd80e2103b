"""convnext-mm: ConvNeXt backbone, layer-decay optimizer and paper configs for mmdet 3.x / mmseg 1.x.

The pinned environment (including mmcv 2.1.0 built from source with its C++ ops) is set up by
``make test`` / ``tools/setup_env.sh``; this file declares the package and what it needs at run time.
"""
import re

from setuptools import find_packages, setup

with open('convnext_mm/__init__.py', encoding='utf-8') as init:
    VERSION = re.search(r"^__version__ = '([^']+)'", init.read(), re.M).group(1)

setup(
    name='convnext-mm',
    version=VERSION,
    description='ConvNeXt backbone plugin for mmdetection 3.x and mmsegmentation 1.x',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['convnext_mm', 'convnext_mm.*']),
    python_requires='>=3.8',
    install_requires=[
        'torch>=2.0',
        'mmengine>=0.10,<0.11',
        'mmcv>=2.0.0rc4,<2.2.0',
        'numpy',
    ],
    extras_require={
        'det': ['mmdet>=3.0,<4', 'pycocotools'],
        'seg': ['mmsegmentation>=1.0,<2', 'ftfy', 'regex'],
    },
    license='MIT',
)
