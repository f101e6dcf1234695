"""oi: let a local language model write code, and run every block in a throwaway container."""

__version__ = "0.1.0"
