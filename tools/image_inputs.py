"""The inputs tools/infer.py and tools/deploy_infer.py take: image files, folders of images (their files with an
image extension, not their subfolders) and video files, and the errors that name a bad one. numpy and OpenCV
only: tools/deploy_infer.py runs where torch and OpenMMLab are not installed."""
import os
import os.path as osp

import cv2
import numpy as np

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v')


def error(message):
    return SystemExit(f'error: {message}')


def list_inputs(paths):
    """[(name, path, is_video)] for the command line's inputs; each bad one is an error that names it."""
    items = []
    for path in paths:
        if osp.isdir(path):
            images = sorted(f for f in os.listdir(path)
                            if f.lower().endswith(IMAGE_EXTENSIONS) and osp.isfile(osp.join(path, f)))
            if not images:
                raise error(f'folder {path} holds no images ({" ".join(IMAGE_EXTENSIONS)}; subfolders are not '
                            'searched): put images there, or give the image or video files themselves')
            items += [(name, osp.join(path, name), False) for name in images]
        elif osp.isfile(path):
            extension = osp.splitext(path)[1].lower()
            if extension not in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS:
                raise error(f'{path} is neither an image ({" ".join(IMAGE_EXTENSIONS)}) nor a video '
                            f'({" ".join(VIDEO_EXTENSIONS)}); rename it if its extension is wrong')
            items.append((osp.basename(path), path, extension in VIDEO_EXTENSIONS))
        else:
            raise error(f'input {path} does not exist: give image files, folders of images or video files')
    stems = {}
    for name, path, _ in items:
        stem = osp.splitext(name)[0]
        if stem in stems:
            raise error(f'{stems[stem]} and {path} would write the same output files ({stem}.*): rename one, or '
                        'run them with separate --out-dir')
        stems[stem] = path
    return items


def read_image(path):
    """The image as BGR uint8, decoded as mmcv's ``imread`` and the config's LoadImageFromFile do it (the file's
    bytes through ``cv2.imdecode`` with IMREAD_COLOR); an unreadable file is an error."""
    try:
        image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    except Exception as exception:  # OpenCV raises several types for broken files
        image, reason = None, f' ({exception})'
    else:
        reason = ''
    if image is None:
        raise error(f'cannot read image {path}{reason}: the file is not an image OpenCV can decode (truncated, '
                    'or another format); convert it to JPEG or PNG, or remove it from the input')
    return image
