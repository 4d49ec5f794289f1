module kubetune.local/apiprobe

go 1.26.0
