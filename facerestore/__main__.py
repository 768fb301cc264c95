from facerestore.cli.app import main

main()
