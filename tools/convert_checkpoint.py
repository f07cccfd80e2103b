"""Turn a ConvNeXt checkpoint of any supported layout into a clean backbone file.

    python tools/convert_checkpoint.py SOURCE DESTINATION

SOURCE: a file (``.pth`` or ``.safetensors``), URL or ``hf-hub:REPO_ID`` in the official ConvNeXt / ConvNeXt V2,
timm, transformers or mmpretrain layout, or a detector,
segmentor or backbone checkpoint saved by convnext_mm. DESTINATION receives only the backbone's tensors under
convnext_mm's names (a plain state dict, readable by ``torch.load(weights_only=True)``); the classifier, neck
and heads are left out. The result is checked by loading it into a ConvNeXt of the architecture it holds
before it replaces DESTINATION.
"""
import argparse
import os
import os.path as osp
import sys
import tempfile

import torch

from convnext_mm import ConvNeXt
from convnext_mm.checkpoint import (BACKBONE_KEY, CheckpointError, arch_of_state_dict, convert_state_dict,
                                   load_pretrained, read_checkpoint)


def convert(source, destination):
    """Write the backbone of ``source`` to ``destination``; returns (backbone args, tensors, ignored keys)."""
    converted, ignored = convert_state_dict(read_checkpoint(source))
    ignored += [key for key in converted if not BACKBONE_KEY.match(key)]  # counted in the summary line
    converted = {key: value for key, value in converted.items() if BACKBONE_KEY.match(key)}
    if not converted:
        raise CheckpointError(f'{source} holds no ConvNeXt backbone parameters')
    try:
        backbone_args = arch_of_state_dict(converted)
    except CheckpointError as error:
        raise CheckpointError(f'{source} {error}') from error
    directory = osp.dirname(osp.abspath(destination))
    os.makedirs(directory, exist_ok=True)
    # Write next to the destination, check, then rename: a failed run leaves no half-written file behind.
    handle, temporary = tempfile.mkstemp(suffix='.pth', dir=directory)
    os.close(handle)
    try:
        torch.save(converted, temporary)
        try:
            load_pretrained(ConvNeXt(**backbone_args), temporary)
        except CheckpointError as error:  # named after SOURCE: the temporary file means nothing to the user
            raise CheckpointError(f'{source}: its backbone fails the check after conversion: '
                                  f'{str(error).replace(temporary, "the converted file")}') from error
        os.replace(temporary, destination)
    finally:
        if osp.exists(temporary):
            os.remove(temporary)
    return backbone_args, converted, ignored


def main(argv=None):
    parser = argparse.ArgumentParser(description='Convert a ConvNeXt checkpoint into a clean backbone file')
    parser.add_argument('source', help='checkpoint file or URL, any supported layout')
    parser.add_argument('destination', help='backbone file to write')
    args = parser.parse_args(argv)
    try:
        backbone_args, converted, ignored = convert(args.source, args.destination)
    except CheckpointError as error:
        sys.exit(f'error: {error}')
    arch = backbone_args['arch']
    print(f'{args.destination}: {len(converted)} backbone tensors, ConvNeXt{" V2" if backbone_args["use_grn"] else ""} '
          f'depths={arch["depths"]} dims={arch["dims"]}; left out {len(ignored)} tensors of no backbone '
          f'(classifier, neck, heads)')


if __name__ == '__main__':
    main()
