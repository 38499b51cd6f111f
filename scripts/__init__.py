"""Command-line tools (run as files: ``python scripts/run_workflow.py ...``) and the helpers they share with the
tests (imported as ``scripts.<module>`` with the repository root on ``sys.path``; never the other way round).

ComfyUI never imports this package: the pack's ``__init__.py`` loads only ``nodes/``.
"""
