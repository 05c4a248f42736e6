#!/bin/sh
echo "hello from the app layer"
