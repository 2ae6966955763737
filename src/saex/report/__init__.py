"""The reproduce pipeline (``saex reproduce``) and the paper report it ends with."""
