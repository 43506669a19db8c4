from bioprop_cli.cli import main

main()
