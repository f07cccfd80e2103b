# The README's two commands: `make demo` (the main job) and `make test`. Each sets up .venv/ on first use.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo demo-seg

setup: $(VENV)/.complete

# Re-run the (idempotent) set-up whenever what it installs changes.
$(VENV)/.complete: requirements.txt setup.py tools/setup_env.sh
	bash tools/setup_env.sh

test: setup
	$(PY) -m pytest tests -q -rs

# The main job: the demo config, the paper's Cascade Mask R-CNN ConvNeXt-T (configs/cascade/convnext_t_3x.py)
# trained from scratch on generated COCO-format data (data/demo/, made by the config's DemoDataHook), evaluated
# with mmdet's CocoMetric; pictures of predictions go to work_dirs/, the curves to its curves.png. mmdet's own
# tools/train.py runs the demo config the same way. See docs/demo.md.
demo: setup
	$(PY) tools/train.py configs/demo/cascade_convnext_t_demo.py
	$(PY) tools/plot_curves.py work_dirs/convnext_t_3x_demo

# The same for UperNet ConvNeXt-T on generated ADE20K-format data, evaluated with mmseg's IoUMetric.
demo-seg: setup
	$(PY) tools/train.py configs/demo/upernet_convnext_t_demo.py
	$(PY) tools/plot_curves.py work_dirs/convnext_t_512_160k_ade20k_demo
