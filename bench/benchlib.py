"""Helpers the bench scripts share."""
import os


def emit_table(lines, out):
    """Prints the Markdown lines and writes them to the file out (its folder created if needed)."""
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
