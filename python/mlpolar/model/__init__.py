from .fukui import fukui_equilibrate
