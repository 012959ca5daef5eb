# cmake -DREADME=<README.md> -DSOURCE=<examples/quickstart.cpp> -P readme_matches.cmake
# The README's first ```cpp block must be the example source verbatim, so the code the README shows is
# the code that is compiled and run.
file(READ "${README}" _readme)
file(READ "${SOURCE}" _source)
string(FIND "${_readme}" "```cpp\n" _begin)
if(_begin EQUAL -1)
  message(FATAL_ERROR "${README} has no ```cpp block")
endif()
math(EXPR _begin "${_begin} + 7")
string(SUBSTRING "${_readme}" ${_begin} -1 _rest)
string(FIND "${_rest}" "```" _end)
string(SUBSTRING "${_rest}" 0 ${_end} _block)
if(NOT _block STREQUAL _source)
  message(FATAL_ERROR "the first ```cpp block of ${README} differs from ${SOURCE}; paste the file into the README")
endif()
message(STATUS "README example matches ${SOURCE}")
