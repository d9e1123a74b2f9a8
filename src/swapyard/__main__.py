from swapyard.cli.main import main

main()
