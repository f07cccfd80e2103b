"""Fixtures shared by the test modules. The helpers they build on are plain modules beside this one:
project.py (the repository's paths and tools), tiny_models.py (backbone sizes, shrunk configs, batches),
tiny_data.py (tiny COCO and ADE20K sets on disk), checkpoint_layouts.py (the public weight layouts),
layer_decay_tables.py (the official lr-scale tables) and metrics_recomputed.py (metrics counted without the
host libraries' evaluators).

It also marks the slow integration tests ``slow`` (the marker is registered in pytest.ini), so that
``python -m pytest tests -m "not slow"`` is a quick run; ``make test`` runs everything.
"""
import os.path as osp

import pytest
import torch

from tiny_data import write_coco

# Test module -> the names of its slow tests (every parametrization of each), or None: the whole module. Chosen by
# measurement (--durations=0 over the whole suite): tools run as new processes, training runs, several processes,
# kill-and-resume, demo runs. tests/test_docs.py checks that each name exists.
SLOW = {
    'test_multinode.py': None,  # processes on two nodes, one killed, then resumed
    'test_resume.py': {  # training runs killed and resumed
        'test_mmdets_own_train_tool_killed_in_the_middle_of_an_epoch_then_resumes',
        'test_sigkill_while_writing_a_checkpoint_leaves_no_checkpoint_file_then_resume',
    },
    'test_demo_mode.py': {  # demo training runs, the test tool on a demo checkpoint
        'test_mmdets_own_tools_train_and_test_the_demo_config_as_ours_do',
        'test_one_training_step_on_the_demo_data',
        'test_a_demo_checkpoint_with_its_paper_config_is_an_error_naming_the_demo_config',
    },
    'test_tools.py': {  # the tools as new processes, training runs, models at the paper's sizes
        'test_two_processes_train_through_dist_train_sh',
        'test_slurm_train_sh_runs_train_py_through_srun',
        'test_segmentation_trains_in_one_process_and_tests_with_tta',
        'test_missing_imagenet_checkpoint_stops_training_with_the_fix',
        'test_test_tool_on_the_demo_config_with_data_root',
        'test_get_flops_gives_the_numbers_of_docs_results_at_the_paper_input_size',
        'test_benchmark_reports_the_speed_of_the_timed_test_steps',
        'test_benchmarks_measure_in_a_fresh_process_with_this_ones_threads',
    },
    'test_released_models.py': None,  # released models' layouts through every host loader and test tool
    'test_mixed_precision.py': {  # the train, test and benchmark tools' runs
        'test_train_tool_validates_a_detector_with_a_config_val_fp16',
        'test_test_tool_with_a_config_fp16_evaluates_the_detector',
        'test_test_tool_amp_evaluates_the_segmentor',
        'test_benchmark_amp_profile_parts_add_up_to_the_step',
    },
    'test_infer_export.py': {  # the inference tool's runs, exports checked in onnxruntime
        'test_infer_detection_on_a_folder_and_a_video',
        'test_infer_segmentation_on_a_folder',
        'test_export_backbone_runs_in_onnxruntime_with_the_same_outputs',
        'test_export_segmentor_runs_in_onnxruntime_with_the_same_logits',
    },
    'test_whole_detector.py': {  # whole detectors exported, run in both engines against tools/infer.py
        'test_the_exported_detector_gives_infers_detections',
    },
    'test_dropin.py': {  # training steps of the hosts' shipped configs and other detector families
        'test_shipped_config_with_two_edits_builds_trains_and_decays_officially',
        'test_other_families_train_and_predict_with_convnext',
    },
    'test_configs.py': {'test_small_config_trains_a_step_and_predicts_on_the_cpu'},  # paper models' training steps
    'test_data_errors.py': {'test_images_without_objects_are_kept_and_train_and_evaluate'},  # a training run
    'test_isotropic.py': {  # released files up to L, the configs' training steps
        'test_official_file_loads_exactly_and_gives_the_reference_outputs',
        'test_config_trains_a_step_on_the_cpu_with_gradients_reaching_the_stem',
    },
    'test_backbone.py': {'test_every_preset_gives_strides_4_to_32_at_an_odd_size'},  # every preset up to huge
    'test_fast_paths.py': {'test_compile_option_matches_the_paper_formulation'},  # torch.compile
    'test_guest.py': {'test_a_host_project_registers_its_own_ln2d_whichever_is_imported_first'},  # new processes
    'test_docs.py': {'test_every_flag_the_docs_give_a_tool_is_in_its_help'},  # every tool's --help, new processes
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = osp.basename(item.path)
        if module in SLOW and (SLOW[module] is None or item.originalname in SLOW[module]):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def one_thread():
    """Train in-process on one thread: tiny models gain nothing from a second."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def tiny_coco(tmp_path_factory):
    """A COCO-format set (train2017, val2017) of four 64x64 images, COCO's 80 classes."""
    return write_coco(str(tmp_path_factory.mktemp('coco')))
