def main() -> None:
    print("freshrank")
