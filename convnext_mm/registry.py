"""Registration of convnext_mm's classes in the host libraries' registries.

mmdet and mmseg each keep their own registries, so a class is registered in every host library that is
installed: a user of mmdet alone needs no mmseg, and vice versa.
"""
import importlib
import importlib.util

HOST_LIBRARIES = ('mmdet', 'mmseg')


def register_in_hosts(registry_name):
    """Class decorator: register the class in ``registry_name`` of mmdet and of mmseg, where installed."""

    def register(cls):
        for library in HOST_LIBRARIES:
            # Skip a library that is not installed, but let a broken install raise its own error.
            if importlib.util.find_spec(library) is None:
                continue
            registries = importlib.import_module(f'{library}.registry')
            getattr(registries, registry_name).register_module(module=cls)
        return cls

    return register
