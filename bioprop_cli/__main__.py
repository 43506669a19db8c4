from bioprop_cli.launch import main

main()
