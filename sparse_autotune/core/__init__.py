"""The problem and its variant spaces, on the CPU: Problem, Space, render, the family registry. May import: errors, resources."""
