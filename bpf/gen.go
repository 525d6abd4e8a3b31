package bpf

// The objects are committed; regenerating them needs clang and llvm-strip (Debian: clang, llvm).
//go:generate go tool bpf2go -cc clang -strip llvm-strip -cflags "-O2 -g -Wall -Werror -nostdinc" -target bpfel -go-package bpf inbound inbound.c
//go:generate go tool bpf2go -cc clang -strip llvm-strip -cflags "-O2 -g -Wall -Werror -nostdinc" -target bpfel -go-package bpf outbound outbound.c
//go:generate go tool bpf2go -cc clang -strip llvm-strip -cflags "-O2 -g -Wall -Werror -nostdinc" -target bpfel -go-package bpf skLookup sk_lookup.c
