from stages.cli import main

if __name__ == "__main__":  # spawned env workers re-import this module: keep the guard
    main()
