module copyheader

go 1.24
